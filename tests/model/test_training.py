"""Smoke training on the mini set at a tiny image size: the real code path, two phases, fast."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from agerange.config import TrainConfig, load_section
from agerange.inference import group_probabilities, predict_probabilities
from agerange.training import FeatureCache, TrainData, TrainOptions, load_split, train
from agerange.training.data import soft_labels
from tests.conftest import PROJECT_ROOT

WEIGHTS = PROJECT_ROOT.parent / "shared" / "weights"
pytestmark = pytest.mark.slow


class Interrupted(Exception):
    pass


def _tiny_config(size: int, **changes) -> TrainConfig:
    """The settings of the small two-phase runs below (params.yaml's, made tiny), `changes` on top."""
    tiny = dict(
        backbone="mobilenet_v2", image_size=size, weights_dir=str(WEIGHTS), unfreeze_layers=20, dropout=0.1,
        head_learning_rate=3e-3, finetune_learning_rate=3e-4, patience=5, batch_size=32,
        neighbour_smoothing=0.1, age_sigma=0.0, realign=False, weight_soup=False, finetune_runs=1,
        ensemble_members=1, augment_variants=0, head="groups", seed=1,
    )  # fmt: skip
    return dataclasses.replace(load_section("train", PROJECT_ROOT / "params.yaml"), **{**tiny, **changes})


def _cut_model(size: int, unfreeze_layers: int):
    """MobileNetV2 with its top layers unfrozen, its freeze boundary, and its two parts cut there."""
    from agerange.model import (
        boundary_layer,
        build_classifier,
        first_trainable_index,
        split_at_boundary,
        unfreeze,
    )

    model = build_classifier("mobilenet_v2", size, WEIGHTS, 0.0)
    unfreeze(model, "mobilenet_v2", unfreeze_layers)
    cut = boundary_layer(model, first_trainable_index(model))
    bottom, top = split_at_boundary(model, cut)
    return model, cut, bottom, top


@pytest.fixture(scope="module")
def mini_splits(mini_ingested):
    images, metadata, _ = mini_ingested
    from agerange.split import split_table

    table = split_table(metadata, 0.15, 0.15, seed=0)
    size = 48
    return {
        side: load_split(table[table["split"] == side].reset_index(drop=True), images, size)
        for side in ("train", "val", "test")
    }, size


def test_two_phase_training_lowers_the_loss_and_its_age_distribution_answers_the_groups(
    mini_splits, tmp_path
):
    """params.yaml's recipe made tiny: the distribution head (ages), re-cut chips, the weight soup."""
    from agerange.faces import chip_recut
    from agerange.inference import expected_ages
    from agerange.labels import AGE_BINS
    from agerange.metrics import mae_years

    data, size = mini_splits
    epochs = []
    config = _tiny_config(
        size, head="ages", age_sigma=0.085, head_epochs=3, finetune_epochs=2, realign=True, weight_soup=True
    )
    options = TrainOptions(
        tmp_path / "ckpt", recut=chip_recut("blazeface_short", 0.6),
        on_epoch=lambda phase, epoch, metrics: epochs.append((phase, epoch, metrics)),
    )  # fmt: skip
    result = train(config, TrainData(data["train"], data["val"], data["test"]), options)
    history = result.history
    assert list(history["phase"]) == ["head"] * 3 + ["finetune"] * 2
    assert [e for _, e, _ in epochs] == [1, 2, 3, 4, 5]
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert result.boundary is not None  # CPU path: the frozen part was cached
    assert "probe_accuracy" in history
    assert not (tmp_path / "ckpt").exists()  # finished: checkpoints removed

    # a distribution over the years whose group sums beat chance (0.1) on the images it learnt
    assert result.model.output_shape[-1] == AGE_BINS
    train_split = data["train"]
    outputs = predict_probabilities(result.model, train_split.chips)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, atol=1e-4)
    assert (group_probabilities(outputs).argmax(1) == train_split.groups).mean() > 0.2
    ages = train_split.table["age"].to_numpy()
    # the expected age beats the best constant answer (the median age) on the images it learnt
    assert mae_years(expected_ages(outputs), ages) < np.abs(ages - np.median(ages)).mean()

    # The returned model is the weight soup of fine-tuning epochs, as good as its best epoch on
    # val, where accuracy (early stopping, the soup) is that of the bins' group sums.
    assert set(result.soup["epochs"]) <= {4, 5} and result.soup["epochs"]
    assert result.soup["val_accuracy"] >= history.loc[history["phase"] == "finetune", "val_accuracy"].max()
    val_outputs = predict_probabilities(result.model, data["val"].chips, flip=False)
    assert (group_probabilities(val_outputs).argmax(1) == data["val"].groups).mean() == pytest.approx(
        result.soup["val_accuracy"], abs=1e-6
    )


def test_greedy_soup_keeps_epochs_that_help_and_drops_one_that_hurts():
    import keras

    from agerange.training.data import make_dataset
    from agerange.training.soup import greedy_soup

    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 6)).astype(np.float32)
    groups = features[:, :3].argmax(1)  # learnable: the largest of the first three features
    data = make_dataset(features, groups, np.ones(300, np.float32), batch_size=64, shuffle=False, seed=0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(
        loss="categorical_crossentropy", metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")]
    )
    good = [np.zeros((6, 10), np.float32), np.zeros(10, np.float32)]
    good[0][[0, 1, 2], [0, 1, 2]] = 5.0
    close = [good[0] / 2, good[1]]  # same decisions, less sure
    bad = [-3 * good[0], good[1]]  # predicts the smallest feature, strongly: it would flip the average

    soup = greedy_soup(model, [(7, 1.0, good), (9, 0.95, close), (8, 0.0, bad)], data)

    assert soup["epochs"] == [7, 9]  # the bad epoch would have pulled the average down
    np.testing.assert_allclose(model.get_weights()[0], (good[0] + close[0]) / 2, atol=1e-6)
    assert soup["val_accuracy"] == pytest.approx(
        float((model.predict(features, verbose=0).argmax(1) == groups).mean())
    )


def test_cached_and_full_paths_compute_the_same_model(mini_splits, tmp_path):
    """The freeze-boundary cut is exact: the cached part followed by the rest equals the whole."""
    data, size = mini_splits
    model, _, bottom, top = _cut_model(size, unfreeze_layers=35)
    chips = data["val"].chips[:8].astype(np.float32)
    np.testing.assert_allclose(model(chips), top(bottom(chips)), atol=1e-5)


def test_each_epoch_shows_every_row_once_as_one_of_its_versions():
    """Training rows come in versions (plain, mirrored, re-cut...): one per row per epoch, all used."""
    from agerange.training.data import make_dataset

    rows = np.arange(200, dtype=np.float32)[:, None]
    versions = [rows, rows + 1000, rows + 2000, rows + 3000]
    groups, weights = np.zeros(200, np.int64), np.ones(200, np.float32)
    dataset = make_dataset(versions, groups, weights, batch_size=32, shuffle=True, seed=3)
    for _ in range(2):
        seen = np.concatenate([inputs.numpy()[:, 0] for inputs, _, _ in dataset])
        assert sorted(seen % 1000) == list(range(200))  # every row once
        counts = np.bincount((seen // 1000).astype(int), minlength=4)
        assert counts.min() > 20, counts  # every version picked (about 50 each)


def test_training_pipelines_run_without_tf_data_autotuning():
    """With autotuning on, both cores often stood idle for up to 30 s whenever Keras let go of an
    iterator (every epoch, evaluate and predict; bench/idle_between_epochs.py): every pipeline that
    training builds turns it off, and the predict pipeline gives Keras's own batches, in order."""
    from agerange.training.data import array_batches, make_dataset

    rows = np.arange(10, dtype=np.float32)[:, None]
    shuffled = make_dataset(rows, np.zeros(10, np.int64), np.ones(10, np.float32), 4, True, 0)
    in_order = array_batches(rows, 4)
    for dataset in (shuffled, in_order):
        assert dataset.options().autotune.enabled is False
    assert [len(batch) for batch in in_order] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([batch.numpy() for batch in in_order]), rows)


def test_soft_labels_keep_mass_on_the_truth_and_its_neighbours():
    labels = soft_labels(np.array([0, 5, 9]), 0.2)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0)
    assert labels[0, 0] == pytest.approx(0.8) and labels[0, 1] == pytest.approx(0.2)
    assert labels[1, 4] == pytest.approx(0.1) and labels[1, 6] == pytest.approx(0.1)
    assert labels[2, 8] == pytest.approx(0.2)


def test_training_targets_come_from_ages_when_age_sigma_is_set(mini_splits):
    from agerange.labels import age_distribution
    from agerange.training.data import training_targets

    train_split = mini_splits[0]["train"]
    np.testing.assert_array_equal(
        training_targets(train_split, 0.2, 0.0), soft_labels(train_split.groups, 0.2)
    )
    by_age = training_targets(train_split, 0.2, 0.085)
    np.testing.assert_array_equal(by_age, age_distribution(train_split.table["age"].to_numpy(), 0.085))
    assert (by_age.argmax(axis=1) == train_split.groups).all()


def test_fine_tuning_runs_start_from_phase_one_and_all_feed_the_soup(mini_splits, tmp_path, monkeypatch):
    from agerange.training import phases

    data, size = mini_splits
    config = _tiny_config(size, head_epochs=2, finetune_epochs=2)
    snapshots, starts = [], []

    def keep_snapshots(phase, epoch, metrics):
        snapshots.append(sorted(path.name for path in (tmp_path / "ckpt" / "soup").glob("*.npz")))

    real_fit = phases.fit

    def fit_noting_the_start(trainer, *args, **kwargs):  # the real fit, with the weights it starts from
        starts.append([weights.copy() for weights in trainer.get_weights()])
        return real_fit(trainer, *args, **kwargs)

    monkeypatch.setattr(phases, "fit", fit_noting_the_start)

    result = train(
        dataclasses.replace(config, weight_soup=True, finetune_runs=2), TrainData(data["train"], data["val"]),
        TrainOptions(tmp_path / "ckpt", on_epoch=keep_snapshots),
    )  # fmt: skip
    assert list(result.history["phase"]) == ["head"] * 2 + ["finetune"] * 4
    assert list(result.history["epoch"]) == [1, 2, 3, 4, 5, 6]
    # The snapshot of an epoch is written after the tracking hook: the last one sees the first five.
    assert snapshots[-1] == [f"epoch_{epoch:03d}.npz" for epoch in (3, 4, 5)]
    assert set(result.soup["epochs"]) <= {3, 4, 5, 6} and result.soup["epochs"]
    # Both runs started from the weights phase 1 ended with, not the second from the first's end.
    # (A loss comparison said this before: on the mini set one epoch's loss depends on the data
    # order as much as on the start, and it failed on another machine with the code unchanged.)
    head, first_run, second_run = starts
    assert all(np.array_equal(a, b) for a, b in zip(first_run, second_run, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(head, first_run, strict=True))  # phase 1 trained
    with pytest.raises(ValueError, match="needs weight_soup"):
        train(
            dataclasses.replace(config, finetune_runs=2),
            TrainData(data["train"], data["val"]),
            TrainOptions(tmp_path / "x"),
        )


def test_a_head_only_training_caches_above_the_pooling_and_learns(mini_splits, tmp_path):
    """With no layer unfrozen the cut lies above the pooling layer: phase 1 reads the cached
    output itself (there are no pooled features to compute below it)."""
    data, size = mini_splits
    config = _tiny_config(size, unfreeze_layers=0, head_epochs=3, finetune_epochs=0)
    result = train(config, TrainData(data["train"], data["val"]), TrainOptions(tmp_path / "ckpt"))
    assert list(result.history["phase"]) == ["head"] * 3
    answers = group_probabilities(predict_probabilities(result.model, data["train"].chips)).argmax(1)
    assert (answers == data["train"].groups).mean() > 0.2  # chance is 0.1


def test_with_the_soup_fine_tuning_runs_every_epoch_and_without_it_stops_early(mini_splits, tmp_path):
    """Validation accuracy that never improves (a learning rate of 0) stops a plain fine-tuning
    after two epochs; with the weight soup every planned epoch runs, and the soup chooses."""
    data, size = mini_splits
    config = _tiny_config(size, head_epochs=1, finetune_epochs=4, finetune_learning_rate=0.0, patience=0)
    epochs = {}
    for soup in (False, True):
        result = train(
            dataclasses.replace(config, weight_soup=soup), TrainData(data["train"], data["val"]),
            TrainOptions(tmp_path / f"soup_{soup}"),
        )  # fmt: skip
        epochs[soup] = int((result.history["phase"] == "finetune").sum())
    assert epochs == {False: 2, True: 4}


def test_the_validation_accuracy_reported_is_the_returned_models_even_when_fine_tuning_made_it_worse(
    mini_splits, tmp_path
):
    """The sweep's objective and the train summary read `val_accuracy`: a phase-1 epoch better
    than every fine-tuning epoch must not stand in for the model that is returned."""
    data, size = mini_splits
    # a learning rate that wrecks the unfrozen layers: phase 2 ends below phase 1's best
    config = _tiny_config(size, head_epochs=3, finetune_epochs=2, finetune_learning_rate=1.0)
    result = train(config, TrainData(data["train"], data["val"]), TrainOptions(tmp_path / "ckpt"))
    history = result.history
    measured = (
        predict_probabilities(result.model, data["val"].chips, flip=False).argmax(1) == data["val"].groups
    ).mean()
    one_image = 1 / len(data["val"].groups)  # measured on the cached (float16) features: a borderline face
    assert result.val_accuracy == pytest.approx(measured, abs=one_image + 1e-6)
    phase_one_best = history.loc[history["phase"] == "head", "val_accuracy"].max()
    assert phase_one_best > result.val_accuracy  # the case where the best epoch misreports
    # with the weight soup, the soup's own measure is the returned model's
    souped = train(
        dataclasses.replace(config, finetune_learning_rate=3e-4, weight_soup=True),
        TrainData(data["train"], data["val"]), TrainOptions(tmp_path / "soup"),
    )  # fmt: skip
    measured = (
        predict_probabilities(souped.model, data["val"].chips, flip=False).argmax(1) == data["val"].groups
    ).mean()
    assert souped.val_accuracy == souped.soup["val_accuracy"] == pytest.approx(measured, abs=one_image + 1e-6)


@pytest.mark.parametrize("soup", [False, True])
def test_a_training_killed_after_its_last_fine_tuning_run_resumes_to_the_same_model(
    mini_splits, tmp_path, monkeypatch, soup
):
    """Killed after the last run's checkpoint but before the soup or the final score: the restart
    skips every phase, yet must still score the model (its trainer was never compiled in that
    process) and return the run's own weights, not phase 1's."""
    from agerange.training import phases, recipe

    data, size = mini_splits
    config = _tiny_config(size, head_epochs=1, finetune_epochs=1, weight_soup=soup)
    splits = TrainData(data["train"], data["val"])
    whole = train(config, splits, TrainOptions(tmp_path / "whole"))
    step = (phases, "greedy_soup") if soup else (recipe, "validation_score")
    real = getattr(*step)

    def killed(*args, **kwargs):
        raise Interrupted

    monkeypatch.setattr(*step, killed)
    with pytest.raises(Interrupted):
        train(config, splits, TrainOptions(tmp_path / "killed"))
    monkeypatch.setattr(*step, real)
    resumed = train(config, splits, TrainOptions(tmp_path / "killed"))
    assert list(resumed.history["epoch"]) == list(whole.history["epoch"]) == [1, 2]
    assert resumed.val_accuracy == whole.val_accuracy
    weights = zip(resumed.model.get_weights(), whole.model.get_weights(), strict=True)
    assert all(np.array_equal(a, b) for a, b in weights)


def test_an_interrupted_training_resumes_where_it_stopped_and_never_redoes_a_finished_run(
    mini_splits, tmp_path
):
    """Three crashes, as if the machine went down three times: in phase 1, in the first
    fine-tuning run and in the second. Each restart goes on after the last checkpointed epoch,
    and no phase or run after a resumed one loses epochs."""
    data, size = mini_splits
    config = _tiny_config(size, head_epochs=2, finetune_epochs=2, weight_soup=True, finetune_runs=2)
    splits = TrainData(data["train"], data["val"])
    # epochs 1-2 are phase 1, 3-4 the first fine-tuning run, 5-6 the second
    resumed = {}

    def crash_at(crash_epoch: int | None, name: str):
        resumed[name] = []

        def on_epoch(phase, epoch, metrics):
            resumed[name].append((phase, epoch))
            if epoch == crash_epoch:
                raise Interrupted

        return TrainOptions(tmp_path / "ckpt", on_epoch=on_epoch)

    with pytest.raises(Interrupted):
        train(config, splits, crash_at(1, "first"))
    with pytest.raises(Interrupted):
        train(config, splits, crash_at(3, "second"))
    assert (tmp_path / "ckpt" / "phase1_done.weights.h5").is_file()
    with pytest.raises(Interrupted):
        train(config, splits, crash_at(5, "third"))
    result = train(config, splits, crash_at(None, "fourth"))
    # Each restart goes on after the last checkpointed epoch: phase 1 is not trained again once
    # done, nor a fine-tuning run's checkpointed epochs; and every phase and run still trains all
    # of its own (Keras would start phase 2 after a resumed phase 1 at phase 1's resumed epoch).
    assert resumed == {
        "first": [("head", 1)],
        "second": [("head", 2), ("finetune", 3)],
        "third": [("finetune", 4), ("finetune", 5)],
        "fourth": [("finetune", 6)],
    }
    assert list(result.history["epoch"]) == [2, 4, 6]  # an epoch's record is lost with its crash
    # and so is its soup snapshot, written after the tracking hook; no snapshot was overwritten
    assert set(result.soup["epochs"]) <= {4, 6} and result.soup["epochs"]
    assert not (tmp_path / "ckpt").exists()


def test_an_ensemble_averages_its_members_and_resumes_without_retraining_a_finished_one(
    mini_splits, tmp_path
):
    import keras

    from agerange.training import train_members

    data, size = mini_splits
    config = _tiny_config(size, head_epochs=2, finetune_epochs=1, ensemble_members=2)
    splits = TrainData(data["train"], data["val"])

    def crash_in_the_second_member(phase, epoch, metrics):
        if epoch == 4:  # epochs 1-3 are the first member, 4-6 the second
            raise Interrupted

    with pytest.raises(Interrupted):
        train_members(config, splits, TrainOptions(tmp_path / "ckpt", on_epoch=crash_in_the_second_member))
    assert (tmp_path / "ckpt" / "member_0_done" / "model.keras").is_file()
    resumed = []
    result = train_members(
        config,
        splits,
        TrainOptions(tmp_path / "ckpt", on_epoch=lambda phase, epoch, metrics: resumed.append(epoch)),
    )
    assert resumed and min(resumed) >= 4  # the first member is not trained again
    history = result.history
    assert list(history.loc[history["member"] == 0, "epoch"]) == [1, 2, 3]
    assert set(history["member"]) == {0, 1} and (history.loc[history["member"] == 1, "epoch"] > 3).all()
    assert not (tmp_path / "ckpt").exists()

    # One model: the first member flat, the second on top of the frozen part they share.
    model = result.model
    chips = data["val"].chips[:8].astype(np.float32)
    first = np.asarray(keras.Model(model.input, model.get_layer("age_group").output)(chips))
    shared = keras.Model(model.input, model.get_layer(result.boundary).output)(chips)
    second = np.asarray(model.get_layer("member_1")(shared))
    assert np.abs(first - second).max() > 1e-3  # two different models
    np.testing.assert_allclose(np.asarray(model(chips)), (first + second) / 2, atol=1e-6)
    model.save(tmp_path / "ensemble.keras")
    reloaded = keras.models.load_model(tmp_path / "ensemble.keras", compile=False)
    np.testing.assert_allclose(np.asarray(reloaded(chips)), (first + second) / 2, atol=1e-6)
    # and it exports to the TFLite file predict and serving run, embedding included
    from agerange.predict import Classifier
    from agerange.serving import export_classifier

    probabilities, embeddings = Classifier(export_classifier(reloaded, tmp_path / "ensemble.tflite"))(
        chips, flip=False
    )
    np.testing.assert_allclose(probabilities, (first + second) / 2, atol=1e-4)
    assert embeddings.shape == (8, 1280)
    # cut below the members' output layers (what the int8 export quantizes), it answers the same
    # with those layers applied on the host
    _assert_heads_on_the_host_answer_as_the_model(reloaded, chips, embeddings)
    val_accuracy = (
        predict_probabilities(model, data["val"].chips, flip=False).argmax(1) == data["val"].groups
    ).mean()
    assert result.val_accuracy == pytest.approx(val_accuracy, abs=1e-6)


def test_a_recipe_scored_for_all_its_epochs_repeats_the_trainings_own_soups(mini_splits, tmp_path, capsys):
    """bench/recipe_probe.py: an ensemble trained with its epoch snapshots kept, whose soup of the
    first k snapshots is what `finetune_epochs: k` trains; with every epoch, exactly the
    training's own member soups and ensemble."""
    import json

    from agerange.training import configure_device
    from agerange.training.soup import load_snapshots
    from bench.recipe_probe import first_epochs, member_parts, score_recipe, train_recipe, trained_run

    data, size = mini_splits
    config = _tiny_config(
        size, head="ages", age_sigma=0.085, head_epochs=2, finetune_epochs=3, weight_soup=True,
        ensemble_members=2,
    )  # fmt: skip
    device, folder = configure_device("off", "off", 0), tmp_path / "recipe"
    splits = TrainData(data["train"], data["val"])
    run = train_recipe(config, splits, folder, device)
    parts = member_parts(folder, 2)
    assert [len(list(soup.glob("epoch_*.npz"))) for _, soup in parts] == [3, 3]  # kept, every epoch

    rows = score_recipe(folder, config, data["val"], [3, 1])
    assert [(row["k"], row["members"]) for row in rows] == [(3, 1), (3, 2), (1, 1), (1, 2)]
    alone, every, _, first = rows
    trained = [json.loads((model.parent / "result.json").read_text())["soup"] for model, _ in parts]
    assert every["member soups"] == [round(soup["val_accuracy"], 4) for soup in trained]
    assert every["exact"] == pytest.approx(run["soup"]["val_accuracy"], abs=1e-6)  # the ensemble's
    assert 0 < every["within one"] <= 1 and every["answered MAE"] > 0
    # the first member alone: its own soup, as `ensemble_members: 1` would train it
    assert alone["member soups"] == every["member soups"][:1]
    assert alone["exact"] == pytest.approx(alone["member soups"][0], abs=1e-4)
    # with one epoch, each member's soup is its first fine-tuning epoch alone
    for (_, soup), accuracy in zip(parts, first["member soups"], strict=True):
        (snapshot,) = first_epochs(load_snapshots(soup), 1, 3)
        assert snapshot[0] == min(epoch for epoch, _, _ in load_snapshots(soup))
        assert snapshot[1] == pytest.approx(accuracy, abs=1e-4)
    # two fine-tuning runs of 3 epochs (9-11, 12-14): their first two epochs each
    runs = [(epoch, 0.5, []) for epoch in range(9, 15)]
    assert sorted(e for e, _, _ in first_epochs(runs, 2, 3)) == [9, 10, 12, 13]

    # trained once: found without the training data, and not trained again; other settings in
    # that folder are refused
    assert trained_run(folder, config) == run and trained_run(tmp_path / "other", config) is None
    assert train_recipe(config, splits, folder, device) == run
    with pytest.raises(SystemExit):
        train_recipe(dataclasses.replace(config, dropout=0.3), splits, folder, device)
    assert "holds a training of other settings" in capsys.readouterr().err


def test_an_ensemble_refuses_to_share_layers_its_members_trained_differently():
    import keras

    from agerange.model import build_classifier, ensemble_classifier

    members = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        members.append(build_classifier("small_cnn", 32, WEIGHTS, dropout=0.1))
    trained = next(layer.name for layer in members[0].layers if layer.weights)
    with pytest.raises(ValueError, match=f"layer '{trained}' differs"):
        ensemble_classifier(members, shared_until=trained)
    unshared = ensemble_classifier(members)
    chips = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    mean = (np.asarray(members[0](chips)) + np.asarray(members[1](chips))) / 2
    np.testing.assert_allclose(np.asarray(unshared(chips)), mean, atol=1e-6)
    _assert_heads_on_the_host_answer_as_the_model(unshared, chips)
    _assert_heads_on_the_host_answer_as_the_model(members[0], chips)


def _assert_heads_on_the_host_answer_as_the_model(model, chips, embeddings=None):
    from agerange.model import member_embeddings
    from agerange.predict import apply_heads

    embedder, heads = member_embeddings(model)
    kernels = np.stack([np.asarray(head.kernel) for head in heads])
    biases = np.stack([np.asarray(head.bias) for head in heads])
    probabilities, first_embedding = apply_heads(np.asarray(embedder(chips)), kernels, biases)
    np.testing.assert_allclose(probabilities, np.asarray(model(chips)), atol=1e-5)
    if embeddings is not None:
        np.testing.assert_allclose(first_embedding, embeddings, atol=1e-4)


def test_a_model_trained_in_mixed_precision_is_saved_as_float32_and_exports_to_tflite(tmp_path):
    import keras

    from agerange.model import build_classifier, ensemble_classifier, float32_copy
    from agerange.predict import Classifier
    from agerange.serving import export_classifier

    keras.mixed_precision.set_global_policy("mixed_float16")  # as configure_device does on a GPU
    try:
        members = []
        for seed in (0, 1):
            keras.utils.set_random_seed(seed)
            members.append(build_classifier("mobilenet_v2", 48, WEIGHTS, dropout=0.1))
        mixed = ensemble_classifier(members)
        copy = float32_copy(mixed)
    finally:
        keras.mixed_precision.set_global_policy("float32")

    def layers(model):  # the computing layers, nested models' included
        for layer in model.layers:
            if hasattr(layer, "layers"):
                yield from layers(layer)
            elif not isinstance(layer, keras.layers.InputLayer):
                yield layer

    assert any(layer.compute_dtype == "float16" for layer in layers(mixed))
    assert all(layer.compute_dtype == "float32" for layer in layers(copy))
    chips = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3)).astype(np.float32)
    expected = np.asarray(copy(chips))
    np.testing.assert_allclose(expected, np.asarray(mixed(chips), dtype=np.float32), atol=0.02)
    probabilities, _ = Classifier(export_classifier(copy, tmp_path / "model.tflite"))(chips, flip=False)
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)


def test_phase_one_on_cached_pooled_features_sees_what_the_whole_network_computes(mini_splits, tmp_path):
    import keras

    from agerange.model import unfreeze

    data, size = mini_splits
    val = data["val"]
    splits = TrainData(data["train"], val)
    model, boundary, bottom, _ = _cut_model(size, unfreeze_layers=20)
    unfreeze(model, "mobilenet_v2", 0)
    cache, key = FeatureCache(), ("mobilenet_v2", size, boundary)
    features = cache.boundary_features(bottom, key, splits, 32)
    pooled = cache.pooled_features(model, boundary, key, features, splits)
    whole = keras.Model(model.input, model.get_layer("features").output)
    expected = np.asarray(whole(val.chips.astype(np.float32)))
    np.testing.assert_allclose(pooled["val"], expected, atol=0.01 * np.abs(expected).max())  # float16 cut
    mirrored = np.asarray(whole(data["train"].chips[:, :, ::-1].astype(np.float32)))
    np.testing.assert_allclose(pooled["train"][1], mirrored, atol=0.01 * np.abs(mirrored).max())

    # Every cached training trains phase 1 on the pooled features (kept in its cache), and learns,
    # with either head.
    chips, groups = data["train"].chips, data["train"].groups
    for head, sigma in (("groups", 0.0), ("ages", 0.085)):
        config = _tiny_config(size, head_epochs=3, finetune_epochs=2, head=head, age_sigma=sigma)
        fresh = FeatureCache()
        result = train(config, splits, TrainOptions(tmp_path / head, feature_cache=fresh))
        assert any(key[-1] == "pooled" for key in fresh.stored_keys()), head
        answers = group_probabilities(predict_probabilities(result.model, chips)).argmax(1)
        assert (answers == groups).mean() > 0.2, head  # chance is 0.1


def test_real_photo_variants_are_cached_as_the_frozen_part_sees_them_and_training_uses_them(
    mini_splits, tmp_path
):
    from agerange.augment import degraded
    from agerange.training.feature_cache import train_kinds

    data, size = mini_splits
    splits = TrainData(data["train"], data["val"])
    model, boundary, bottom, _ = _cut_model(size, unfreeze_layers=20)
    cache, key = FeatureCache(), ("mobilenet_v2", size, boundary)
    features = cache.boundary_features(bottom, key, splits, 32, variants=2, strength=0.5)
    assert (
        features["kinds"]
        == train_kinds(False, 2, 0.5)
        == ["plain", "mirror", "degraded_0@0.5", "degraded_1@0.5"]
    )
    paths = data["train"].table["path"].tolist()
    for variant in (0, 1):
        expected = np.asarray(bottom(degraded(data["train"].chips, paths, variant, 0.5).astype(np.float32)))
        cached = features["train"][2 + variant].astype(np.float32)
        np.testing.assert_allclose(cached, expected, atol=0.01 * np.abs(expected).max())  # float16 cache
    assert np.abs(features["train"][2] - features["train"][3]).max() > 0.1  # two different versions

    # a training with the variants learns, and its epochs show them (more versions, same rows)
    config = _tiny_config(size, head_epochs=3, finetune_epochs=1, augment_variants=2, augment_strength=0.5)
    result = train(config, splits, TrainOptions(tmp_path / "ckpt"))
    chips, groups = data["train"].chips, data["train"].groups
    assert (predict_probabilities(result.model, chips).argmax(1) == groups).mean() > 0.2  # chance is 0.1


def test_two_trainings_with_the_same_settings_give_identical_weights_and_another_seed_does_not(
    mini_splits, tmp_path
):
    """Reproducible training on one machine: seeds, data order, cached real-photo variants, ops."""
    data, size = mini_splits
    config = _tiny_config(
        size, head="ages", age_sigma=0.085, head_epochs=1, finetune_epochs=1, augment_variants=1
    )
    splits = TrainData(data["train"], data["val"])
    first, second, other_seed = (
        train(settings, splits, TrainOptions(tmp_path / f"run{n}")).model.get_weights()
        for n, settings in enumerate([config, config, dataclasses.replace(config, seed=2)])
    )
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other_seed, strict=True))


def test_the_device_settings_turn_on_deterministic_ops_and_fix_the_thread_pools():
    import subprocess
    import sys

    probe = (
        "import tensorflow as tf; from tensorflow.python.framework import config; "
        "from agerange.training import configure_device; "
        "chosen = configure_device('off', '{mode}', {threads}); "
        "print(chosen['deterministic_ops'], config.is_op_determinism_enabled(), "
        "tf.config.threading.get_intra_op_parallelism_threads())"
    )
    answers = [
        subprocess.run(
            [sys.executable, "-c", probe.format(mode=mode, threads=threads)],
            capture_output=True, text=True, check=True,
        ).stdout.split()[-3:]
        for mode, threads in (("on", 1), ("auto", 0))
    ]  # fmt: skip
    assert answers[0] == ["True", "True", "1"]
    assert answers[1] == ["False", "False", "0"]  # auto on a machine without a GPU: TensorFlow's defaults


def test_a_distilled_student_learns_the_teachers_answers_not_only_the_labels(mini_splits, tmp_path):
    """The teacher's probabilities reach the student's training: a teacher that calls every face
    'Adolescent' makes a student (teacher weight 1) that mostly answers 'Adolescent', while
    the same student on the labels alone (teacher weight 0) does not."""
    from agerange.config import DistilConfig
    from agerange.distil import student_config, train_student

    data, size = mini_splits
    teacher = np.zeros((len(data["train"].groups), 10), np.float32)
    teacher[:, 3] = 1.0
    settings = DistilConfig(enabled=True, image_size=size, teacher_weight=1.0, seed=5)
    config = student_config(_tiny_config(size, head_epochs=4, finetune_epochs=0), settings)
    assert (config.ensemble_members, config.seed, config.image_size) == (1, 5, size)
    answers = {}
    for weight in (1.0, 0.0):
        options = TrainOptions(tmp_path / f"w{weight}")
        result = train_student(config, TrainData(data["train"], data["val"]), teacher, weight, options)
        answers[weight] = predict_probabilities(result.model, data["val"].chips, flip=False).argmax(1)
    assert (answers[1.0] == 3).mean() > 0.8
    assert (answers[0.0] == 3).mean() < 0.5


def test_distillation_targets_blend_teacher_and_labels_and_refuse_another_head():
    from agerange.distil import blend_targets

    teacher = np.array([[0.0, 1.0], [0.5, 0.5]], np.float32)
    labels = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    blended = blend_targets(teacher, labels, 0.75)
    np.testing.assert_allclose(blended, [[0.25, 0.75], [0.625, 0.375]])
    np.testing.assert_allclose(blended.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="train.head must be the teacher's"):
        blend_targets(np.ones((2, 101), np.float32) / 101, labels, 0.5)


def test_the_train_stage_resumes_only_the_same_training(tmp_path, monkeypatch):
    """Checkpoints left by an interrupted run are resumed only for the same settings, input
    files, re-cut detector and device: after a new split they would hold a model that saw what
    are now test rows."""
    import argparse
    import json

    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "pipelines"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    import train as train_stage

    from agerange.config import ResolvedTraining

    resolved = ResolvedTraining(load_section("train"), load_section("rebalance"))
    package = load_section("package")
    args = argparse.Namespace(
        splits=tmp_path / "splits.parquet", train=tmp_path / "train.parquet",
        checkpoints=tmp_path / "checkpoints", store=tmp_path / "mlruns",
    )  # fmt: skip
    args.splits.write_bytes(b"split A")
    args.train.write_bytes(b"rows")
    device = {"augment": False, "mixed_precision": False}
    no_rows = pd.DataFrame({"path": pd.Series([], dtype=str), "age_group": pd.Series([], dtype=int)})
    empty = TrainData(load_split(no_rows, tmp_path, 8), load_split(no_rows, tmp_path, 8))

    def run_id(**changed) -> str:
        with train_stage._training_run(args, resolved, changed.get("device", device), empty, package) as run:
            (args.checkpoints / "phase1_done.weights.h5").write_bytes(b"weights")
            return run

    first = run_id()
    assert run_id() == first  # interrupted and started again: the same training resumes
    assert json.loads((args.checkpoints / "run.json").read_text())["run_id"] == first
    args.splits.write_bytes(b"split B")  # a new split: its checkpoints are another training's
    second = run_id()
    assert second != first
    assert run_id(device={**device, "augment": True}) != second  # moved to a GPU


def test_the_online_augmentations_draw_independently_of_each_other():
    """Each augmentation layer has its own seed: with one seed for all, every mirrored image was
    also darkened and every other one brightened (one random number drove them all)."""
    from agerange.training.feeds import augmentation

    gradient = np.tile(np.linspace(50, 200, 32, dtype=np.float32), (32, 1))  # brighter to the right
    batch = np.repeat(np.stack([gradient] * 3, axis=-1)[None], 64, axis=0)
    out = np.asarray(augmentation(42)(batch, training=True))
    mirrored = out[:, :, :8].mean(axis=(1, 2, 3)) > out[:, :, -8:].mean(axis=(1, 2, 3))
    brighter = out.mean(axis=(1, 2, 3)) > batch.mean(axis=(1, 2, 3))
    assert 0 < mirrored.sum() < 64
    # both kinds of image got both kinds of brightness change
    assert {(bool(m), bool(b)) for m, b in zip(mirrored, brighter, strict=True)} == {
        (True, True),
        (True, False),
        (False, True),
        (False, False),
    }
