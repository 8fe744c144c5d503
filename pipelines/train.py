"""DVC stage `train`: two-phase transfer learning, every epoch tracked in MLflow.

Trains with the tune stage's resolved configuration (params.yaml's values with the study's best
applied) on the rebalance stage's rows. Resumes an interrupted run: the epoch checkpoints and the
MLflow run id are kept in --checkpoints until training finishes.
"""

import argparse
import dataclasses
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from agerange import provenance, tracking
from agerange.config import ConfigError, fail, load_section, read_resolved, setup_logging
from agerange.evaluate import plot_curves
from agerange.files import atomic_path, resumable_run, save_run_state, sha256_file, write_csv, write_json
from agerange.model import float32_copy
from agerange.training import (
    TrainData,
    configure_device,
    recut_identity,
    stage_data,
    stage_options,
    train_members,
)
from agerange.training.report import model_info, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name, text in [("splits", "split table"), ("train", "rebalanced training rows"), ("images", "chips"),
                       ("config", "the tune stage's resolved training configuration"),
                       ("model", "output folder: model.keras, model_info.json, run.json"),
                       ("history", "per-epoch CSV (DVC plots)"), ("metrics", "JSON summary"),
                       ("checkpoints", "epoch checkpoints, kept until done")]:  # fmt: skip
        parser.add_argument(f"--{name}", type=Path, required=True, help=text)
    tracking.add_store_argument(parser)
    args = parser.parse_args()
    setup_logging()
    try:
        resolved, package = read_resolved(args.config), load_section("package")
    except ConfigError as error:
        fail(str(error))
    config = resolved.train
    if resolved.tuned:
        logging.getLogger("train").info("using the tuned params: %s", resolved.tuned)
    device = configure_device(config.mixed_precision, config.deterministic, config.threads)
    data = _decode(args, config)
    with _training_run(args, resolved, device, data, package) as run_id:
        options = stage_options(config, device, package, args.checkpoints / "epochs", tracking.epoch_hook())
        try:
            result = train_members(config, data, options)
        except ValueError as error:  # bad settings or weights: one line, nothing written
            fail(str(error))
        figures = _save(args, result, config, device["mixed_precision"], data)
    shutil.rmtree(args.checkpoints, ignore_errors=True)
    print(
        f"train: {len(data.train.groups)} training rows, {len(data.val.groups)} validation images, "
        f"{config.backbone} at {config.image_size}px, {figures['epochs']} epochs in "
        f"{figures['train_seconds']} s "
        f"({figures['train_images_per_second']} images/s); best validation accuracy "
        f"{figures['best_val_accuracy']:.3f}; MLflow run {run_id}, model {figures['model_uri']}."
    )


def _decode(args: argparse.Namespace, config) -> TrainData:
    splits, train_rows = pd.read_parquet(args.splits), pd.read_parquet(args.train)
    return stage_data(splits, train_rows, args.images, config.image_size, config.seed)


@contextmanager
def _training_run(
    args: argparse.Namespace, resolved, device: dict, data: TrainData, package
) -> Iterator[str]:
    """The MLflow run of this training: resumed when the checkpoints hold one for the same
    training, i.e. the same settings, input files, re-cut detector and device."""
    settings = dataclasses.asdict(resolved)
    same_training = {
        "params": settings,
        "inputs": {str(path): sha256_file(path) for path in (args.splits, args.train)},
        "recut": recut_identity(package),
        "device": device,
    }
    # another training's checkpoints are never resumed (its rows may now be test rows)
    resumed = resumable_run(args.checkpoints, same_training)
    experiment = tracking.use_store(args.store)
    with tracking.start_run(experiment, f"train-{resolved.train.backbone}", resumed):
        run_id = tracking.active_run_id()
        save_run_state(args.checkpoints, run_id, same_training)
        if resumed is None:
            tracking.log_params(settings["train"], prefix="train")
            tracking.log_params(settings["rebalance"], prefix="rebalance")
            tracking.log_params(dataclasses.asdict(load_section("split")), prefix="split")
            device_tags = {f"device.{key}": value for key, value in device.items()}
            tracking.set_tags({"git_commit": provenance.git_commit(), "stage": "train", **device_tags})
            tracking.set_tags({f"data.{path}": md5 for path, md5 in provenance.data_version().items()})
            tracking.log_dataset(data.train.table, "train", str(args.train), "training")
            tracking.log_dataset(data.val.table, "val", str(args.splits), "validation")
        yield run_id


def _save(args: argparse.Namespace, result, config, mixed_precision: bool, data: TrainData) -> dict:
    """Write the model, history, curves and summary; log them to the run. Returns the summary."""
    info = model_info(config, result.boundary)
    # saved in float32 whatever the training precision: TFLite has no float16 convolutions
    model = float32_copy(result.model) if mixed_precision else result.model
    with atomic_path(args.model) as folder:
        folder.mkdir()
        model.save(folder / "model.keras")
        write_json(info, folder / "model_info.json")
    write_csv(result.history, args.history)
    curves = plot_curves(result.history, args.history.with_suffix(".png"))
    figures = summary(result)
    write_json(figures, args.metrics)
    tracking.log_metrics(figures)
    tracking.log_artifacts([args.history, curves, args.model / "model_info.json"], folder="training")
    model_uri = tracking.log_keras_model(model, info, data.probe.chips[:2])
    tracking.write_run_reference(args.model / "run.json", tracking.active_run_id(), model_uri)
    return {**figures, "model_uri": model_uri}


if __name__ == "__main__":
    main()
