"""Training recipes side by side on validation: the train stage's recipe against changed ones,
each also as it would be with fewer fine-tuning epochs.

Every recipe trains the way the train stage does (`train_members` with data/training.json's
resolved settings, on data/train.parquet's rows, the same seeds), with its epoch snapshots kept
in --out; a changed recipe is those settings with `--recipe key=value[,key=value]` on top. With a
constant learning rate and a seeded data order, a fine-tuning run of k epochs is the first k
epochs of a longer one, so the greedy soup of the first k snapshots is exactly what
`train.finetune_epochs: k` trains: each recipe is scored for every --k on validation, argmax
(exact, within one, MAE of the answered age), from its members' soups and the ensemble of the
first m of them for every m (`--members 3` also says what one and two members give). The
largest k of the default recipe with all its members is the train stage's own model (members
trained alone: see --members). A recipe already trained in --out is scored again, not
retrained (only validation is decoded for it): its time columns then come from that earlier
run, and the table says when it ran (a training resumed after an interruption times only what
it ran after it).

    python bench/recipe_probe.py --recipe unfreeze_layers=100 [--recipe image_size=192 ...]
        [--members 1] [--k 10 12 15] [--out bench/runs/recipes]
"""

import argparse
import dataclasses
import datetime
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from agerange.config import ConfigError, TrainConfig, build, fail, load_section, read_resolved, setup_logging
from agerange.files import atomic_path, write_json


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", action="append", default=[], help="key=value[,...] of train settings")
    parser.add_argument("--members", type=int, default=1, help="ensemble members per recipe (the stage: 2)")
    parser.add_argument("--k", type=int, nargs="+", help="fine-tuning epochs to score (default: all)")
    parser.add_argument("--out", type=Path, default=Path("bench/runs/recipes"))
    parser.add_argument("--config", type=Path, default=Path("data/training.json"))
    parser.add_argument("--splits", type=Path, default=Path("data/splits.parquet"))
    parser.add_argument("--train", type=Path, default=Path("data/train.parquet"))
    parser.add_argument("--images", type=Path, default=Path("data/images"))
    args = parser.parse_args()
    setup_logging()  # before TensorFlow is imported: it quiets the notices a CPU run prints
    try:
        default = dataclasses.replace(read_resolved(args.config).train, ensemble_members=args.members)
        recipes = {"default": default} | {text: changed(default, text) for text in args.recipe}
    except ConfigError as error:
        fail(str(error))
    for path in (args.splits, args.train, args.images):
        if not path.exists():
            fail(f"{path}: no such file or folder (`dvc repro rebalance` writes the training inputs)")
    ks = args.k or [default.finetune_epochs]
    finished = {}  # recipe: its finished run in --out, or None
    for name, config in recipes.items():  # before anything trains
        if max(ks) > config.finetune_epochs:
            fail(f"--k {max(ks)}: recipe {name} fine-tunes for {config.finetune_epochs} epochs only")
        finished[name] = trained_run(args.out / name, config)  # stops now on a folder of other settings

    from agerange.training import configure_device, stage_data
    from agerange.training.data import load_split

    device = configure_device(default.mixed_precision, default.deterministic, default.threads)
    splits, train_rows = pd.read_parquet(args.splits), pd.read_parquet(args.train)
    rows = []
    for name, config in recipes.items():
        folder, run = args.out / name, finished[name]
        if run is None:
            data = stage_data(splits, train_rows, args.images, config.image_size, config.seed)
            run, val = train_recipe(config, data, folder, device), data.val
        else:  # scored again: validation is all it needs
            val = load_split(splits[splits["split"] == "val"], args.images, config.image_size)
        for figures in score_recipe(folder, config, val, ks):
            rows.append({"recipe": name, **figures, "fine-tune s/epoch": run["finetune_seconds_per_epoch"],
                         "training s": round(run["seconds"]), "trained": run["trained"]})  # fmt: skip
    print_table(rows, max(ks))


def changed(config: TrainConfig, text: str) -> TrainConfig:
    """`config` with a recipe's `key=value,key=value` on top, checked like params.yaml."""
    pairs = [pair.partition("=") for pair in text.split(",")]
    if any(not key or not sep for key, sep, _ in pairs):
        raise ConfigError(f"--recipe {text!r}: expected key=value[,key=value]")
    values = {key.strip(): yaml.safe_load(value) for key, _, value in pairs}
    return build(TrainConfig, {**dataclasses.asdict(config), **values}, f"--recipe {text!r}: train")


def trained_run(folder: Path, config: TrainConfig) -> dict | None:
    """The summary of `config`'s finished training in `folder`, None when it has not finished
    there; stops with one line when `folder` holds a training of other settings."""
    summary_file = folder / "run.json"
    if not summary_file.is_file():
        return None
    run = json.loads(summary_file.read_text())
    if run["config"] != dataclasses.asdict(config):
        fail(f"{folder}: holds a training of other settings; give another --out")
    return run


def train_recipe(config: TrainConfig, data, folder: Path, device: dict) -> dict:
    """Train `config` like the train stage, keeping every member's epoch snapshots in `folder`
    (resumed there when interrupted; not trained again once finished). Returns the run's summary."""
    from agerange.training import stage_options, train_members

    finished = trained_run(folder, config)
    if finished is not None:
        return finished
    ended: list[tuple[str, float]] = []  # (phase, when) after each epoch
    hook = lambda phase, epoch, metrics: ended.append((phase, time.monotonic()))  # noqa: E731
    options = stage_options(config, device, load_section("package"), folder / "checkpoints", hook)
    result = train_members(config, data, dataclasses.replace(options, keep_checkpoints=True))
    # the time between fine-tuning epochs that follow one another (a member's first follows phase 1)
    gaps = [b - a for (pa, a), (pb, b) in zip(ended, ended[1:], strict=False) if pa == pb == "finetune"]
    run = {
        "config": dataclasses.asdict(config), "seconds": result.seconds, "boundary": result.boundary,
        "finetune_seconds_per_epoch": round(statistics.median(gaps), 1) if gaps else None,
        "soup": result.soup, "trained": datetime.datetime.now().isoformat(timespec="minutes"),
    }  # fmt: skip
    if config.ensemble_members == 1:  # an ensemble keeps its members' models itself
        result.model.save(folder / "model.keras")
    with atomic_path(folder / "run.json") as path:  # last: it marks the recipe as trained
        write_json(run, path)
    return run


def member_parts(folder: Path, members: int) -> list[tuple[Path, Path]]:
    """(model file, epoch snapshot folder) of each member trained in `folder`."""
    checkpoints = folder / "checkpoints"
    if members == 1:
        return [(folder / "model.keras", checkpoints / "soup")]
    return [(checkpoints / f"member_{m}_done" / "model.keras", checkpoints / f"member_{m}" / "soup")
            for m in range(members)]  # fmt: skip


def first_epochs(snapshots: list, k: int, epochs_per_run: int) -> list:
    """The snapshots of each fine-tuning run's first k epochs (the runs follow one another)."""
    first = min(epoch for epoch, _, _ in snapshots)
    return [snapshot for snapshot in snapshots if (snapshot[0] - first) % epochs_per_run < k]


def score_recipe(folder: Path, config: TrainConfig, val, ks: list[int]) -> list[dict]:
    """For each k: every member's greedy soup of its first k fine-tuning epochs, and for each m
    the ensemble of the first m soups (what `ensemble_members: m` trains: the members' seeds do
    not depend on how many there are), on validation."""
    import keras

    from agerange.model import ensemble_classifier, split_at_boundary
    from agerange.training.data import make_dataset, validation_targets
    from agerange.training.feature_cache import compute_features, frozen_forward
    from agerange.training.phases import compile_for
    from agerange.training.soup import greedy_soup, load_snapshots

    boundary = json.loads((folder / "run.json").read_text())["boundary"]
    parts = member_parts(folder, config.ensemble_members)
    models = [keras.models.load_model(model_file, compile=False) for model_file, _ in parts]
    snapshots = [load_snapshots(soup_folder) for _, soup_folder in parts]
    # the part below the cut is the same pretrained network in every member: run once, as in training
    bottom = split_at_boundary(models[0], boundary)[0]
    features = compute_features(frozen_forward(bottom), val.chips, config.batch_size)
    val_data = make_dataset(features, val.groups, val.weights, config.batch_size, False, config.seed,
                            validation_targets(val, config.head))  # fmt: skip
    rows = []
    for k in ks:
        soups = []
        for model, member_snapshots in zip(models, snapshots, strict=True):
            _, top = split_at_boundary(model, boundary)  # shares its layers with `model`
            compile_for(top, config.finetune_learning_rate, False, config.age_loss_weight)
            kept = first_epochs(member_snapshots, k, config.finetune_epochs)
            soups.append(greedy_soup(top, kept, val_data))
        for members in range(1, len(models) + 1):
            ensemble = ensemble_classifier(models[:members], shared_until=boundary)
            rows.append({"k": k, "members": members,
                         "member soups": [round(soup["val_accuracy"], 4) for soup in soups[:members]],
                         **validation_figures(ensemble, val, config)})  # fmt: skip
    return rows


def validation_figures(model, val, config: TrainConfig) -> dict:
    """Exact, within one and (with the ages head) the answered age's MAE, the most likely group
    as the answer."""
    from agerange.inference import age_in_group, group_probabilities
    from agerange.metrics import exact_accuracy, mae_years, within_one
    from agerange.training.data import array_batches

    outputs = model.predict(array_batches(val.chips.astype(np.float32), config.batch_size), verbose=0)
    groups = group_probabilities(outputs).argmax(axis=1)
    ages = val.table["age"].to_numpy()
    mae = mae_years(age_in_group(outputs, groups), ages) if config.head == "ages" else None
    return {"exact": exact_accuracy(groups, val.groups), "within one": within_one(groups, val.groups),
            "answered MAE": mae}  # fmt: skip


def print_table(rows: list[dict], k: int) -> None:
    """The rows as a markdown table, then each changed recipe against the default at `k` epochs,
    each with all its members."""
    formats = {"exact": "{:.1%}", "within one": "{:.1%}", "answered MAE": "{:.2f}"}
    header = list(rows[0])
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        cells = ["-" if row[key] is None else formats.get(key, "{}").format(row[key]) for key in header]
        print("| " + " | ".join(cells) + " |")
    most = {row["recipe"]: max(r["members"] for r in rows if r["recipe"] == row["recipe"]) for row in rows}
    whole = [row for row in rows if row["k"] == k and row["members"] == most[row["recipe"]]]
    base = next(row for row in whole if row["recipe"] == "default")
    for row in whole:
        if row["recipe"] == "default":
            continue
        epoch = row["fine-tune s/epoch"] / base["fine-tune s/epoch"] if base["fine-tune s/epoch"] else None
        print(
            f"{row['recipe']} against default at k={k}: exact {100 * (row['exact'] - base['exact']):+.1f} "
            f"points, within one {100 * (row['within one'] - base['within one']):+.1f}; training "
            f"{row['training s'] / base['training s']:.2f}x the time, a fine-tuning epoch "
            + (f"{epoch:.2f}x" if epoch else "-")
        )


if __name__ == "__main__":
    main()
