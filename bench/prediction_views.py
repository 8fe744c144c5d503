"""More views of each chip at test time: a trained model's validation accuracy with the plain chip
alone (what predict answers from, the baseline) against the mean of several views (the mirror,
the chip zoomed in and out), and what each costs, in one run on the same chips.

The most likely group is the answer (argmax), so the rows compare the views, not the decision
rule; the answered age's MAE is given for the ages head. Each view is a whole pass of the model,
so k views cost about k times the plain pass: the seconds column measures it.

With --with-model, another training's model (an earlier run's data/model/model.keras, or a
registered version's `model/data/model.keras` artifact) is a view too: averaging two trainings
is what a bigger ensemble would give, at the cost of a second training.

    python bench/prediction_views.py [--model data/model/model.keras] [--zoom-in 1.08] [--zoom-out 0.93]
        [--with-model OTHER.keras]
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agerange.config import fail, load_section, setup_logging


def zoomed(chips: np.ndarray, factor: float) -> np.ndarray:
    """Chips zoomed by `factor` about their centre, the same size: > 1 crops the centre and
    enlarges it, < 1 shrinks the chip and fills the border with its edge pixels."""
    import tensorflow as tf

    side = chips.shape[1]
    if factor > 1:
        crop = int(round(side / factor))
        start = (side - crop) // 2
        return tf.image.resize(chips[:, start : start + crop, start : start + crop], (side, side)).numpy()
    small = int(round(side * factor))
    before = (side - small) // 2
    after = side - small - before
    shrunk = tf.image.resize(chips, (small, small)).numpy()
    return np.pad(shrunk, ((0, 0), (before, after), (before, after), (0, 0)), mode="edge")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("data/model/model.keras"))
    parser.add_argument("--splits", type=Path, default=Path("data/splits.parquet"))
    parser.add_argument("--images", type=Path, default=Path("data/images"))
    parser.add_argument("--zoom-in", type=float, default=1.08)
    parser.add_argument("--zoom-out", type=float, default=0.93)
    parser.add_argument("--with-model", type=Path, help="another training's model, averaged as a view")
    args = parser.parse_args()
    setup_logging()  # before TensorFlow is imported: it quiets the notices a CPU run prints
    inputs = [(args.model, "`dvc repro train` writes it"), (args.splits, "`dvc repro split` writes it")]
    if args.with_model:
        inputs.append((args.with_model, "give another training's model"))
    for path, hint in inputs:
        if not path.is_file():
            fail(f"{path}: no such file ({hint})")

    import keras

    from agerange.inference import age_in_group, group_probabilities, is_age_distribution
    from agerange.metrics import exact_accuracy, mae_years, within_one
    from agerange.training.data import array_batches, load_split

    model = keras.models.load_model(args.model, compile=False)
    second = keras.models.load_model(args.with_model, compile=False) if args.with_model else None
    shapes = lambda network: (network.input.shape[1:], network.output.shape[1:])  # noqa: E731
    if second is not None and shapes(second) != shapes(model):
        fail(f"{args.with_model}: another input size or head than {args.model}'s; give a model like it")
    size, batch = int(model.input.shape[1]), load_section("train").batch_size
    splits = pd.read_parquet(args.splits)
    val = load_split(splits[splits["split"] == "val"], args.images, size)
    chips = val.chips.astype(np.float32)
    views = {  # name: (model, its input)
        "plain": (model, lambda: chips),
        "mirror": (model, lambda: chips[:, :, ::-1]),
        f"zoom in {args.zoom_in:g}": (model, lambda: zoomed(chips, args.zoom_in)),
        f"zoom out {args.zoom_out:g}": (model, lambda: zoomed(chips, args.zoom_out)),
    }
    if second is not None:
        views["other model"] = (second, lambda: chips)
        views["other model mirror"] = (second, lambda: chips[:, :, ::-1])
    outputs, seconds = {}, {}
    for name, (viewer, view) in views.items():
        started = time.monotonic()  # the view's own making counts: it is part of its cost
        outputs[name] = viewer.predict(array_batches(view(), batch), verbose=0)
        seconds[name] = time.monotonic() - started
    plain, mirror, zoom_in, zoom_out = list(views)[:4]
    combinations = [[plain], [plain, mirror], [plain, zoom_in, zoom_out], [plain, mirror, zoom_in, zoom_out]]
    if args.with_model:
        other, other_mirror = list(views)[4:]
        combinations += [[other], [plain, other], [plain, mirror, other, other_mirror]]
    ages, ages_head = val.table["age"].to_numpy(), is_age_distribution(outputs[plain])
    print("| views | exact | within one | answered MAE | seconds | x plain |\n|---|---|---|---|---|---|")
    for names in combinations:
        mean = np.mean([outputs[name] for name in names], axis=0)
        groups = group_probabilities(mean).argmax(axis=1)
        exact, near = exact_accuracy(groups, val.groups), within_one(groups, val.groups)
        mae = f"{mae_years(age_in_group(mean, groups), ages):.2f}" if ages_head else "-"
        cost = sum(seconds[name] for name in names)
        print(f"| {' + '.join(names)} | {exact:.1%} | {near:.1%} | {mae} | {cost:.1f} "
              f"| {cost / seconds[plain]:.2f}x |")  # fmt: skip
    print(f"{len(val.groups)} validation chips at {size} px; argmax of the mean probabilities"
          + (f"; other model: {args.with_model}" if args.with_model else ""))  # fmt: skip


if __name__ == "__main__":
    main()
