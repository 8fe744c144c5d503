"""DVC stage `distil`: one fast student network trained on the trained model's probabilities.

The train stage's model (an ensemble of `train.ensemble_members` networks) labels every
training face with its age distribution (averaged with its mirror image); a single network of the same
backbone at `distil.image_size` is trained by the same recipe on those soft targets, blended
with the labels' own (`distil.teacher_weight`). Logged as its own MLflow run, tagged with the
teacher's run. The package stage measures it beside the trained model and serves it when the
accuracy rule allows. Resumes an interrupted run from its epoch checkpoints.

With `distil.enabled: false` (the default) it trains nothing: the output folder holds only a
note saying why (`model.SKIPPED`), which the package stage reads as no student.
"""

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd

from agerange import tracking
from agerange.config import ConfigError, fail, load_section, read_resolved, setup_logging
from agerange.distil import student_config, teacher_probabilities, train_student
from agerange.files import atomic_path, resumable_run, save_run_state, write_json
from agerange.model import SKIPPED, float32_copy
from agerange.training import configure_device, load_split, recut_identity, stage_data, stage_options
from agerange.training.report import model_info, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name, text in [("teacher", "the train stage's model folder"), ("splits", "split table"),
                       ("train", "rebalanced training rows"), ("images", "chips"),
                       ("config", "the tune stage's resolved training configuration"),
                       ("out", "output folder: model.keras, model_info.json (or the skipped note)"),
                       ("metrics", "JSON summary"),
                       ("checkpoints", "epoch checkpoints, kept until done")]:  # fmt: skip
        parser.add_argument(f"--{name}", type=Path, required=True, help=text)
    args = parser.parse_args()
    setup_logging()
    try:
        settings = load_section("distil")
        if not settings.enabled:
            skip(args.out, args.metrics, "distil.enabled is false in params.yaml")
            return
        resolved, package = read_resolved(args.config), load_section("package")
    except ConfigError as error:
        fail(str(error))
    if not (args.teacher / "model.keras").is_file():
        fail(f"{args.teacher}: no model.keras (run `dvc repro train` first)")
    config = student_config(resolved.train, settings)
    device = configure_device(config.mixed_precision, config.deterministic, config.threads)
    import keras  # after setup_logging, which quiets TensorFlow's start-up notices

    splits, train_rows = pd.read_parquet(args.splits), pd.read_parquet(args.train)
    teacher = keras.models.load_model(args.teacher / "model.keras", compile=False)
    teacher_size = int(json.loads((args.teacher / "model_info.json").read_text())["image_size"])
    outputs = teacher_probabilities(teacher, load_split(train_rows, args.images, teacher_size).chips)
    del teacher
    data = stage_data(splits, train_rows, args.images, config.image_size, config.seed)

    teacher_run = tracking.read_run_reference(args.teacher / "run.json")
    experiment = tracking.use_store(teacher_run["tracking_uri"])
    # resume only the same student: the same teacher, distil settings and re-cut detector
    same_student = {
        "teacher_run": teacher_run["run_id"],
        "settings": {**vars(settings)},
        "recut": recut_identity(package),
    }
    resumed = resumable_run(args.checkpoints, same_student)
    name = f"distil-{config.backbone}-{config.image_size}px"
    with tracking.start_run(experiment, name, resumed):
        run_id = tracking.active_run_id()
        save_run_state(args.checkpoints, run_id, same_student)
        if resumed is None:
            tracking.log_params({**vars(settings)}, prefix="distil")
            tracking.set_tags({"stage": "distil", "teacher_run": teacher_run["run_id"]})
        options = stage_options(config, device, package, args.checkpoints / "epochs", tracking.epoch_hook())
        try:
            result = train_student(config, data, outputs, settings.teacher_weight, options)
        except ValueError as error:
            fail(str(error))
        info = {**model_info(config, result.boundary), "teacher_run": teacher_run["run_id"]}
        # saved in float32 whatever the training precision: TFLite has no float16 convolutions
        model = float32_copy(result.model) if device["mixed_precision"] else result.model
        with atomic_path(args.out) as folder:
            folder.mkdir()
            model.save(folder / "model.keras")
            write_json(info, folder / "model_info.json")
        figures = summary(result)
        write_json({**figures, "run_id": run_id}, args.metrics)
        tracking.log_metrics(figures)
    shutil.rmtree(args.checkpoints, ignore_errors=True)
    print(
        f"distil: a {config.backbone} student at {config.image_size}px on {len(data.train.groups)} rows "
        f"(teacher weight {settings.teacher_weight}) in {figures['train_seconds']} s; best validation "
        f"accuracy {figures['best_val_accuracy']:.3f}; MLflow run {run_id}."
    )


def skip(out: Path, metrics: Path, reason: str) -> None:
    """No student: a folder that says why (the package stage reads it as none), in place of a
    previous student, and the summary says so too. Checkpoints of an unfinished student stay,
    for a later run with the student on to resume."""
    with atomic_path(out) as folder:
        folder.mkdir()
        write_json({"reason": reason}, folder / SKIPPED)
    write_json({"skipped": reason}, metrics)
    print(f"distil: no student trained ({reason}); the package stage weighs the trained model only.")


if __name__ == "__main__":
    main()
