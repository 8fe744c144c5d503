"""The MLflow Model Registry: champion moves only to a better model; nothing is deleted."""

import numpy as np
import pytest

from agerange import tracking


def _tiny_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def _log(experiment: str, seed: int) -> str:
    with tracking.start_run(experiment, f"train-{seed}"):
        return tracking.log_keras_model(_tiny_model(seed), {"image_size": 8}, np.zeros((1, 8, 8, 3)))


@pytest.fixture
def store(tmp_path):
    return tracking.use_store(tmp_path / "mlruns")


def test_a_worse_second_model_does_not_take_champion(store):
    first = tracking.register(_log(store, 1), "val_accuracy", 0.56, {"git_commit": "a"})
    second = tracking.register(_log(store, 2), "val_accuracy", 0.51, {"git_commit": "b"})
    assert (first["alias"], second["alias"]) == ("champion", "challenger")
    assert tracking.aliases() == {"champion": 1, "challenger": 2}
    assert second["champion_score_before"] == 0.56

    # Both versions still exist and the champion still loads and predicts.
    model = tracking.load_keras_model("models:/agerange@champion")
    assert np.asarray(model(np.zeros((1, 8, 8, 3), dtype="float32"))).shape == (1, 10)


def test_a_better_model_takes_champion_and_the_old_one_is_kept(store):
    tracking.register(_log(store, 1), "val_accuracy", 0.50, {})
    better = tracking.register(_log(store, 2), "val_accuracy", 0.58, {})
    assert better["alias"] == "champion"
    assert tracking.aliases() == {"champion": 2, "previous_champion": 1}


def test_a_tie_does_not_move_champion():
    assert tracking.beats(0.5, None)
    assert not tracking.beats(0.5, 0.5)
    assert tracking.beats(4.0, 5.0, greater_is_better=False)


def test_the_same_training_run_packaged_anew_takes_champion_but_another_run_at_a_tie_does_not(store):
    """Repackaging the champion's own weights (same run, same score) moves `champion` to the new
    package; a different model with the same score does not."""
    uri = _log(store, 1)
    run_id = uri.split("/")[1]
    tracking.register(uri, "val_accuracy", 0.55, {"run_id": run_id})
    repackaged = tracking.register(uri, "val_accuracy", 0.55, {"run_id": run_id})
    assert repackaged["alias"] == "champion" and repackaged["repackaged"]
    other = _log(store, 2)
    tie = tracking.register(other, "val_accuracy", 0.55, {"run_id": other.split("/")[1]})
    assert tie["alias"] == "challenger" and not tie["repackaged"]
    assert tracking.aliases() == {"champion": 2, "previous_champion": 1, "challenger": 3}


def test_a_champion_registered_before_the_metric_existed_is_scored_from_its_tags_or_kept(store):
    """Switching register.metric must not hand `champion` to whatever comes next."""
    tracking.register(_log(store, 1), "val_accuracy", 0.59, {"val_accuracy": 0.59, "val_within_one": 0.93})

    def mean_of_tags(tags):
        return (float(tags["val_accuracy"]) + float(tags["val_within_one"])) / 2

    mean = "val_accuracy_and_within_one"
    worse = tracking.register(_log(store, 2), mean, 0.75, {}, score_from_tags=mean_of_tags)
    assert worse["alias"] == "challenger" and worse["champion_score_before"] == pytest.approx(0.76)
    unscorable = tracking.register(_log(store, 3), "val_macro_f1", 0.99, {})  # version 1 has no such tag
    assert unscorable["alias"] == "challenger" and unscorable["champion_score_before"] is None
    better = tracking.register(_log(store, 4), mean, 0.77, {}, score_from_tags=mean_of_tags)
    assert better["alias"] == "champion"
    assert tracking.aliases()["champion"] == 4 and tracking.aliases()["previous_champion"] == 1


def test_register_metric_is_one_evaluation_figure_or_the_mean_of_several():
    from pipelines.register import metric_score

    figures = {"accuracy": 0.6, "within_one": 0.9}
    assert metric_score(figures, "accuracy") == 0.6
    assert metric_score(figures, "accuracy+within_one") == pytest.approx(0.75)
    assert metric_score({"val_accuracy": "0.6", "val_within_one": "0.9"}, "accuracy+within_one", "val_") == (
        pytest.approx(0.75)
    )
    with pytest.raises(KeyError):
        metric_score(figures, "accuracy+f1")
