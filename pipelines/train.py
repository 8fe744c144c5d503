"""DVC stage `train`: two-phase transfer learning, every epoch tracked in MLflow.

Resumes an interrupted run: the epoch checkpoints and the MLflow run id are kept in
--checkpoints until training finishes.
"""

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # entry point: quiet TensorFlow's C++ banner

import pandas as pd  # noqa: E402

from agerange import tracking  # noqa: E402
from agerange.backbones import WeightsError, get_backbone  # noqa: E402
from agerange.config import fail, load_params, setup_logging  # noqa: E402
from agerange.evaluate import plot_curves  # noqa: E402
from agerange.files import atomic_path, write_csv, write_json  # noqa: E402
from agerange.labels import AGE_GROUPS, GROUP_NAMES, group_midpoints  # noqa: E402
from agerange.model import float32_copy  # noqa: E402
from agerange.rebalance import rebalance  # noqa: E402
from agerange.train import configure_device, load_split, probe_rows, train_members  # noqa: E402

log = logging.getLogger("train")


def model_info(params: dict, boundary: str | None) -> dict:
    """Everything needed to use the model without the training code."""
    backbone = get_backbone(params["backbone"])
    return {
        "backbone": backbone.name,
        "image_size": params["image_size"],
        "input": "RGB face chip, float32 pixel values 0-255, shape (image_size, image_size, 3)",
        "preprocessing": backbone.preprocessing + " (inside the model)",
        "class_names": list(GROUP_NAMES),
        "age_ranges": [[low, high] for _, low, high in AGE_GROUPS],
        "group_midpoints": list(group_midpoints()),
        "test_time_flip": True,
        "freeze_boundary": boundary,
        "ensemble_members": params.get("ensemble_members", 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True, help="rebalanced training rows")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument(
        "--model", type=Path, required=True, help="output folder: model.keras, model_info.json, run.json"
    )
    parser.add_argument("--history", type=Path, required=True, help="per-epoch CSV (DVC plots)")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON summary (DVC metrics)")
    parser.add_argument("--checkpoints", type=Path, required=True, help="epoch checkpoints, kept until done")
    parser.add_argument("--store", type=Path, default=Path("mlruns"), help="MLflow tracking store folder")
    parser.add_argument(
        "--best-params", type=Path, help="the tune stage's best params (used when it has any)"
    )
    args = parser.parse_args()
    setup_logging()
    params = load_params("train")
    device = configure_device(params["mixed_precision"])
    log.info("device: %s", device)

    splits = pd.read_parquet(args.splits)
    train_rows = pd.read_parquet(args.train)
    tuned = json.loads(args.best_params.read_text()).get("params", {}) if args.best_params else {}
    if tuned:
        # The study's best wins over params.yaml for the keys it tuned.
        params = {**params, **{key: value for key, value in tuned.items() if key in params}}
        if "rebalance_strategy" in tuned:
            rebalance_params = load_params("rebalance")
            params["rebalance_strategy"] = tuned["rebalance_strategy"]
            train_rows = rebalance(
                splits[splits["split"] == "train"], tuned["rebalance_strategy"],
                rebalance_params["max_per_group"], rebalance_params["seed"],
            )  # fmt: skip
        log.info("using the tuned params: %s", tuned)
    val_rows = splits[splits["split"] == "val"]
    probe = probe_rows(splits[splits["split"] == "test"], seed=params["seed"])
    size = params["image_size"]
    started = time.monotonic()
    data = {name: load_split(rows, args.images, size) for name, rows in
            (("train", train_rows), ("val", val_rows), ("probe", probe))}  # fmt: skip
    log.info(
        "decoded %d chips in %.1f s", sum(len(d.groups) for d in data.values()), time.monotonic() - started
    )

    experiment = tracking.use_store(args.store)
    state_file = args.checkpoints / "run.json"
    previous = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if previous.get("params") != params:
        previous = {}  # different settings: start afresh rather than resume a different training
        shutil.rmtree(args.checkpoints, ignore_errors=True)
    with tracking.start_run(experiment, f"train-{params['backbone']}", previous.get("run_id")):
        run_id = tracking.active_run_id()
        args.checkpoints.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"run_id": run_id, "params": params}))
        if not previous:
            tracking.log_params(params, prefix="train")
            tracking.log_params(load_params("rebalance"), prefix="rebalance")
            tracking.log_params(load_params("split"), prefix="split")
            tracking.set_tags(
                {
                    "git_commit": tracking.git_commit(),
                    "stage": "train",
                    **{f"device.{k}": v for k, v in device.items()},
                }
            )
            tracking.set_tags({f"data.{path}": md5 for path, md5 in tracking.data_version().items()})
            tracking.log_dataset(train_rows, "train", str(args.train), "training")
            tracking.log_dataset(val_rows, "val", str(args.splits), "validation")
        try:
            result = train_members(
                params["ensemble_members"], train=data["train"], val=data["val"], probe=data["probe"],
                backbone=params["backbone"], image_size=size, weights_dir=Path(params["weights_dir"]),
                weights_sha256=params.get("weights_sha256"), unfreeze_layers=params["unfreeze_layers"],
                dropout=params["dropout"], head_learning_rate=params["head_learning_rate"],
                finetune_learning_rate=params["finetune_learning_rate"], head_epochs=params["head_epochs"],
                finetune_epochs=params["finetune_epochs"], patience=params["patience"],
                batch_size=params["batch_size"], neighbour_smoothing=params["neighbour_smoothing"],
                augment=params["augment"] if params["augment"] != "auto" else device["device"] == "gpu",
                seed=params["seed"], checkpoint_dir=args.checkpoints / "epochs",
                on_epoch=tracking.epoch_hook(), jit=bool(device["xla"]), realign=params["realign"],
                weight_soup=params["weight_soup"], age_sigma=params["age_sigma"],
                finetune_runs=params["finetune_runs"],
            )  # fmt: skip
        except (WeightsError, ValueError) as error:
            fail(str(error))

        info = model_info(params, result.boundary)
        # saved in float32 whatever the training precision: TFLite has no float16 convolutions
        model = float32_copy(result.model) if device["mixed_precision"] else result.model
        with atomic_path(args.model) as folder:
            folder.mkdir()
            model.save(folder / "model.keras")
            write_json(info, folder / "model_info.json")
        write_csv(result.history, args.history)
        curves = plot_curves(result.history, args.history.with_suffix(".png"))
        best = result.best_val_accuracy
        summary = {
            "best_val_accuracy": best,
            "best_epoch_val_accuracy": float(result.history["val_accuracy"].max()),
            "best_epoch_val_within_one": float(
                result.history.loc[result.history["val_accuracy"].idxmax(), "val_within_one"]
            ),
            "soup_epochs": len(result.soup["epochs"]) if result.soup else 0,
            "epochs": int(len(result.history)),
            "train_seconds": round(result.seconds, 1),
            "train_images_per_second": round(result.images_per_second, 1),
        }
        write_json(summary, args.metrics)
        tracking.log_metrics(summary)
        tracking.log_artifacts([args.history, curves, args.model / "model_info.json"], folder="training")
        model_uri = tracking.log_keras_model(model, info, data["probe"].chips[:2])
        tracking.write_run_reference(args.model / "run.json", run_id, model_uri)
    shutil.rmtree(args.checkpoints, ignore_errors=True)
    print(
        f"train: {len(train_rows)} training rows, {len(val_rows)} validation images, {params['backbone']} at "
        f"{size}px, {summary['epochs']} epochs in {summary['train_seconds']} s "
        f"({summary['train_images_per_second']} images/s); best validation accuracy {best:.3f}; "
        f"MLflow run {run_id}, model {model_uri}."
    )


if __name__ == "__main__":
    main()
