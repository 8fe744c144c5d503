"""The MLflow Model Registry: champion moves only to a better model; nothing is deleted."""

import mlflow
import numpy as np
import pytest

from agerange import registry, tracking


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
    first = registry.register(_log(store, 1), "val_accuracy", 0.56, {"git_commit": "a"})
    second = registry.register(_log(store, 2), "val_accuracy", 0.51, {"git_commit": "b"})
    assert (first["alias"], second["alias"]) == ("champion", "challenger")
    assert registry.aliases() == {"champion": 1, "challenger": 2}
    assert second["champion_score_before"] == 0.56

    # Both versions still exist and the champion still loads and predicts.
    model = registry.load_keras_model("models:/agerange@champion")
    assert np.asarray(model(np.zeros((1, 8, 8, 3), dtype="float32"))).shape == (1, 10)


def test_a_better_model_takes_champion_and_the_old_one_is_kept(store):
    registry.register(_log(store, 1), "val_accuracy", 0.50, {})
    better = registry.register(_log(store, 2), "val_accuracy", 0.58, {})
    assert better["alias"] == "champion"
    assert registry.aliases() == {"champion": 2, "previous_champion": 1}


def test_a_tie_does_not_move_champion():
    assert registry.beats(0.5, None)
    assert not registry.beats(0.5, 0.5)
    assert registry.beats(4.0, 5.0, greater_is_better=False)


def test_the_same_training_run_packaged_anew_takes_champion_but_another_run_at_a_tie_does_not(store):
    """Repackaging the champion's own weights (same run, same score) moves `champion` to the new
    package, and `previous_champion` stays on the last other model (a retried register stage must
    not leave nothing to roll back to); a different model with the same score does not."""
    first = _log(store, 0)
    registry.register(first, "val_accuracy", 0.50, {"run_id": first.split("/")[1]})
    uri = _log(store, 1)
    run_id = uri.split("/")[1]
    registry.register(uri, "val_accuracy", 0.55, {"run_id": run_id})
    assert registry.aliases() == {"champion": 2, "previous_champion": 1}
    for _ in range(2):
        repackaged = registry.register(uri, "val_accuracy", 0.55, {"run_id": run_id})
        assert repackaged["alias"] == "champion" and repackaged["repackaged"]
        assert registry.aliases()["previous_champion"] == 1
    other = _log(store, 2)
    tie = registry.register(other, "val_accuracy", 0.55, {"run_id": other.split("/")[1]})
    assert tie["alias"] == "challenger" and not tie["repackaged"]
    assert registry.aliases() == {"champion": 4, "previous_champion": 1, "challenger": 5}


def test_a_registry_that_fails_at_the_champion_look_up_promotes_nothing(store, monkeypatch):
    """Only "no such alias" means there is no champion: a store that is down or locked stops the
    registration instead of handing `champion` to a model nobody compared."""
    registry.register(_log(store, 1), "val_accuracy", 0.60, {})

    def unavailable(self, name, alias):
        raise mlflow.exceptions.MlflowException(
            "503 Service Unavailable", error_code="TEMPORARILY_UNAVAILABLE"
        )

    monkeypatch.setattr(mlflow.MlflowClient, "get_model_version_by_alias", unavailable)
    with pytest.raises(mlflow.exceptions.MlflowException, match="503"):
        registry.register(_log(store, 2), "val_accuracy", 0.30, {})
    monkeypatch.undo()
    assert registry.aliases() == {"champion": 1}


def test_a_champion_registered_before_the_metric_existed_is_scored_from_its_tags_or_kept(store):
    """Switching register.metric must not hand `champion` to whatever comes next."""
    registry.register(_log(store, 1), "val_accuracy", 0.59, {"val_accuracy": 0.59, "val_within_one": 0.93})

    def mean_of_tags(tags):
        return (float(tags["val_accuracy"]) + float(tags["val_within_one"])) / 2

    mean = "val_accuracy_and_within_one"
    worse = registry.register(_log(store, 2), mean, 0.75, {}, score_from_tags=mean_of_tags)
    assert worse["alias"] == "challenger" and worse["champion_score_before"] == pytest.approx(0.76)
    unscorable = registry.register(_log(store, 3), "val_macro_f1", 0.99, {})  # version 1 has no such tag
    assert unscorable["alias"] == "challenger" and unscorable["champion_score_before"] is None
    better = registry.register(_log(store, 4), mean, 0.77, {}, score_from_tags=mean_of_tags)
    assert better["alias"] == "champion"
    assert registry.aliases()["champion"] == 4 and registry.aliases()["previous_champion"] == 1


def test_register_metric_is_one_evaluation_figure_or_the_mean_of_several():
    metric_score = registry.metric_score
    figures = {
        "val_accuracy": 0.6,
        "val_within_one": 0.9,
        "test_accuracy": 0.1,
        "new_photos_range_accuracy": 0.3,
    }
    assert metric_score(figures, "accuracy", "val") == 0.6
    assert metric_score(figures, "accuracy+within_one", "val") == pytest.approx(0.75)
    # tags are strings; a part may name another side, such as the labelled new photos
    assert metric_score({"val_accuracy": "0.6", "val_within_one": "0.9"}, "accuracy+within_one", "val") == (
        pytest.approx(0.75)
    )
    assert metric_score(figures, "accuracy+within_one+new_photos.range_accuracy", "val") == pytest.approx(0.6)
    with pytest.raises(KeyError):
        metric_score(figures, "accuracy+f1", "val")


def test_register_evaluated_tags_every_figure_and_describes_the_outcome(store):
    from agerange.config import RegisterConfig

    settings = RegisterConfig(
        name="agerange", split="val", metric="accuracy+within_one", greater_is_better=True
    )
    evaluation = {"val": {"accuracy": 0.6, "within_one": 0.9}, "test": {"accuracy": 0.5, "within_one": 0.8}}
    uri = _log(store, 1)
    outcome = registry.register_evaluated(uri, uri.split("/")[1], evaluation, settings)
    assert outcome["alias"] == "champion" and outcome["metric"] == "val_accuracy_and_within_one"
    assert outcome["score"] == pytest.approx(0.75)
    tags = mlflow.MlflowClient().get_model_version("agerange", "1").tags
    assert {"run_id", "git_commit", "val_accuracy", "test_within_one"} <= set(tags)
    assert "version 1 (val accuracy+within_one 0.7500) is now 'champion'" in registry.describe_outcome(
        outcome, settings
    )
    with pytest.raises(KeyError):
        registry.register_evaluated(uri, "x", {"test": {}}, settings)


def test_a_drift_run_is_logged_to_the_given_store_and_tags_the_champion(tmp_path, store):
    registry.register(_log(store, 1), "val_accuracy", 0.5, {})
    mlflow.set_tracking_uri("sqlite:///" + str(tmp_path / "elsewhere.db"))  # the store is passed in
    report = tmp_path / "summary.json"
    report.write_text("{}")
    summary = {
        "new_photos": {
            "drifted": ["blur"],
            "embedding": {"score": 0.7},
            "columns": {"blur": {"p_value": 0.001}},
        },
        "control": {"drifted": []},
        "accuracy": {"range_accuracy": 0.4},
    }
    run_id = registry.record_drift(
        tmp_path / "mlruns", "models:/agerange@champion", "photos", summary, [report]
    )
    run = mlflow.get_run(run_id)
    assert run.data.tags["model_version"] == "1" and run.data.tags["kind"] == "drift"
    assert run.data.metrics == {
        "drifted_columns": 1, "embedding_auc": 0.7, "p_value.blur": 0.001, "range_accuracy": 0.4,
        "control_drifted_columns": 0,
    }  # fmt: skip
    tags = mlflow.MlflowClient().get_model_version("agerange", "1").tags
    assert (tags["drift.drifted"], tags["drift.run_id"]) == ("blur", run_id)


def test_a_run_reference_names_its_store_and_reading_it_sets_nothing(tmp_path, store):
    with tracking.start_run(store, "train"):
        run_id = tracking.active_run_id()
        tracking.write_run_reference(tmp_path / "run.json", run_id, f"runs:/{run_id}/model")
    mlflow.set_tracking_uri("sqlite:///" + str(tmp_path / "elsewhere.db"))
    reference = tracking.read_run_reference(tmp_path / "run.json")
    assert reference["tracking_uri"] == tracking.store_uri(tmp_path / "mlruns")
    assert mlflow.get_tracking_uri() != reference["tracking_uri"]
    tracking.use_tracking_uri(reference["tracking_uri"])
    assert mlflow.get_run(run_id).info.run_name == "train"


def test_a_champion_scored_by_an_older_measure_is_not_compared_as_if_alike(store):
    """When a side's figures change meaning (registry.SIDE_MEASURES), a new score is not held
    against the champion's old one: another training run is kept as challenger however it
    scores; the champion's own training run, measured anew, takes over. A metric that does not
    read that side compares as before."""
    metric = "val_accuracy_and_within_one_and_new_photos.range_accuracy"
    sides = registry.metric_sides("accuracy+within_one+new_photos.range_accuracy")
    assert sides == {"new_photos"} and registry.metric_sides("accuracy+within_one") == set()
    assert registry.SIDE_MEASURES["new_photos"] >= 2
    champion_uri = _log(store, 1)
    run_id = champion_uri.split("/")[1]
    registry.register(champion_uri, metric, 0.66, {"run_id": run_id}, sides=sides)
    # version 1 as registered before measures were recorded
    mlflow.MlflowClient().delete_model_version_tag("agerange", "1", registry.MEASURE_TAG)
    other = _log(store, 2)
    higher = registry.register(other, metric, 0.70, {"run_id": other.split("/")[1]}, sides=sides)
    assert higher["alias"] == "challenger" and higher["champion_measure_before"] == "new_photos:1"
    again = registry.register(champion_uri, metric, 0.65, {"run_id": run_id}, sides=sides)
    assert again["alias"] == "champion" and again["repackaged"] and again["measure"] == "new_photos:2"
    # the champion's own run measured anew: nothing else to roll back to, so no previous_champion
    assert registry.aliases() == {"champion": 3, "challenger": 2}
    # from now on scores of the same measure compare as before
    lower = registry.register(other, metric, 0.64, {"run_id": other.split("/")[1]}, sides=sides)
    assert lower["alias"] == "challenger" and lower["champion_score_before"] == 0.65
    # a hand-edited tag without a version is an unknown measure, never alike
    mlflow.MlflowClient().set_model_version_tag("agerange", "3", registry.MEASURE_TAG, "new_photos")
    unknown = registry.register(other, metric, 0.99, {"run_id": other.split("/")[1]}, sides=sides)
    assert unknown["alias"] == "challenger" and unknown["champion_measure_before"] == "new_photos:unknown"
    # a metric of the validation split alone reads no re-measured side: the old champion compares
    mean = "val_accuracy_and_within_one"
    registry.register(champion_uri, mean, 0.75, {}, name="validation_only")
    mlflow.MlflowClient().delete_model_version_tag("validation_only", "1", registry.MEASURE_TAG)
    assert registry.register(other, mean, 0.74, {}, name="validation_only")["alias"] == "challenger"
    assert registry.register(other, mean, 0.76, {}, name="validation_only")["alias"] == "champion"

    from agerange.config import RegisterConfig

    settings = RegisterConfig(
        name="agerange",
        split="val",
        metric="accuracy+within_one+new_photos.range_accuracy",
        greater_is_better=True,
    )
    said = registry.describe_outcome(higher, settings)
    assert "(version 1, 0.6600) was measured as new_photos:1, this one as new_photos:2" in said
    assert "not comparable, so it is kept" in said
    assert "measured anew, so it takes over" in registry.describe_outcome(again, settings)
