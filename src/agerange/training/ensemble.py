"""A deep ensemble: the recipe repeated with other seeds, packaged as one averaging model."""

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from agerange.config import TrainConfig
from agerange.files import atomic_path
from agerange.inference import group_probabilities
from agerange.metrics import exact_accuracy
from agerange.model import ensemble_classifier
from agerange.training.data import TrainData, array_batches
from agerange.training.feature_cache import FeatureCache
from agerange.training.recipe import TrainOptions, TrainResult, train

log = logging.getLogger(__name__)


def train_members(config: TrainConfig, data: TrainData, options: TrainOptions) -> TrainResult:
    """`train` repeated `config.ensemble_members` times with seeds seed, seed + 1000, ... (head
    initialisation, data order), then combined into one model that averages their probabilities
    (`model.ensemble_classifier`): a deep ensemble, whose members err on different faces.

    The frozen part's cached features are computed once and shared. A member that finished
    before an interruption is loaded from the checkpoint folder, not trained again. The history
    numbers epochs on from one member to the next (its `member` column says whose), and the
    result's soup entry holds the ensemble's validation accuracy.
    """
    members = config.ensemble_members
    if members == 1:
        return train(config, data, options)
    options = dataclasses.replace(options, feature_cache=options.feature_cache or FeatureCache())
    done_folders, histories, results = [], [], []
    for member in range(members):
        offset = int(histories[-1]["epoch"].max()) if histories else 0
        done = _train_member(config, data, options, member, offset)
        history = pd.read_csv(done / "history.csv").assign(member=member)
        history["epoch"] += offset
        histories.append(history)
        results.append(json.loads((done / "result.json").read_text()))
        done_folders.append(done)
        log.info("ensemble member %d of %d ready", member + 1, members)
    return _combine(config, data, options, done_folders, histories, results)


def _train_member(
    config: TrainConfig, data: TrainData, options: TrainOptions, member: int, offset: int
) -> Path:
    """Train one member (unless it finished before) and keep it in its done folder."""
    root = Path(options.checkpoint_dir)
    done = root / f"member_{member}_done"
    if done.is_dir():
        return done

    def shifted(phase, epoch, metrics):
        if options.on_epoch is not None:
            options.on_epoch(phase, epoch + offset, metrics)

    result = train(
        dataclasses.replace(config, seed=config.seed + 1000 * member),
        data,
        dataclasses.replace(
            options, checkpoint_dir=root / f"member_{member}", on_epoch=shifted, keep_checkpoints=True,
            label=f"member {member + 1}/{config.ensemble_members}",
        ),
    )  # fmt: skip
    with atomic_path(done) as folder:
        folder.mkdir()
        result.model.save(folder / "model.keras")
        result.history.to_csv(folder / "history.csv", index=False)
        summary = {key: getattr(result, key) for key in ("boundary", "seconds", "images_per_second")}
        soup = result.soup and {**result.soup, "epochs": [e + offset for e in result.soup["epochs"]]}
        (folder / "result.json").write_text(json.dumps({**summary, "soup": soup}))
    if not options.keep_checkpoints:  # only now: a run killed before `done` was written resumes from these
        shutil.rmtree(root / f"member_{member}", ignore_errors=True)
    return done


def _combine(
    config: TrainConfig, data: TrainData, options: TrainOptions, done_folders: list[Path],
    histories: list[pd.DataFrame], results: list[dict],
) -> TrainResult:  # fmt: skip
    """One model averaging the members, scored on validation; the checkpoints are then removed."""
    import keras

    models = [keras.models.load_model(done / "model.keras", compile=False) for done in done_folders]
    # the frozen part below the cut is the same pretrained network in every member: run it once
    model = ensemble_classifier(models, shared_until=results[0]["boundary"])
    val = data.val
    predicted = model.predict(array_batches(val.chips.astype(np.float32), config.batch_size), verbose=0)
    accuracy = exact_accuracy(group_probabilities(predicted).argmax(axis=1), val.groups)
    log.info("ensemble of %d members: validation accuracy %.4f", len(models), accuracy)
    seconds = sum(r["seconds"] for r in results)
    soup_epochs = [epoch for r in results if r["soup"] for epoch in r["soup"]["epochs"]]
    if not options.keep_checkpoints:  # finished: nothing left to resume
        shutil.rmtree(options.checkpoint_dir, ignore_errors=True)
    return TrainResult(
        model=model,
        history=pd.concat(histories, ignore_index=True),
        boundary=results[0]["boundary"],
        seconds=seconds,
        images_per_second=sum(r["images_per_second"] * r["seconds"] for r in results) / seconds,
        val_accuracy=accuracy,
        soup={"epochs": soup_epochs, "val_accuracy": accuracy, "members": len(models)},
    )
