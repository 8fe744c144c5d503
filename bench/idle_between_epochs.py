"""Idle cores between epochs: tf.data with its autotuning (TensorFlow's default) against the
project's pipelines without it (`training.data.without_autotuning`), in one run.

The fine-tuning step of the default recipe (MobileNetV2's top from block_8_add, 74 layers, the
distribution head) on random arrays shaped like the cached features (12,510 rows in 6 versions,
as the train stage's), fitted with the project's `fit` and its checkpoint and soup callbacks;
then `predict` on random 160 px chips, twice. For each side: the fit's wall time, how long each
epoch waited for its first batch, the process's CPU seconds, and the predict calls' wall time.

    python bench/idle_between_epochs.py [--epochs 5] [--rows 12510] [--chips 6000]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from agerange.config import setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, default=Path("../shared/weights"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=12510, help="training rows (each in 6 versions)")
    parser.add_argument("--chips", type=int, default=6000, help="chips per predict call")
    args = parser.parse_args()
    setup_logging()  # before TensorFlow is imported: it quiets the notices a CPU run prints

    rows = []
    for autotuned in (True, False):
        name = "autotuned (TensorFlow's default)" if autotuned else "without autotuning (the project)"
        rows.append({"tf.data": name, **fit_figures(args, autotuned), **predict_figures(args, autotuned)})
    header = ["tf.data", "fit s", "first-batch waits s", "fit CPU s", "predict s (two calls)"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[key]) for key in header) + " |")
    print(
        f"fit: {rows[1]['fit s'] / rows[0]['fit s']:.2f}x the time; predict "
        f"{sum(rows[1]['predict s (two calls)']) / sum(rows[0]['predict s (two calls)']):.2f}x"
    )


def _pipeline(data, autotuned: bool):
    """The project's pipeline as it is, or with TensorFlow's default autotuning back on."""
    import tensorflow as tf

    if not autotuned:
        return data
    options = tf.data.Options()
    options.autotune.enabled = True
    return data.with_options(options)


def fit_figures(args: argparse.Namespace, autotuned: bool) -> dict:
    import keras

    from agerange.model import build_classifier, split_at_boundary, unfreeze
    from agerange.training.data import make_dataset
    from agerange.training.phases import compile_for, fit
    from agerange.training.soup import snapshot_callback

    rng = np.random.default_rng(0)
    versions = [rng.standard_normal((args.rows, 10, 10, 64), dtype=np.float32) for _ in range(6)]
    targets = rng.dirichlet(np.ones(101), args.rows).astype(np.float32)
    groups, weights = rng.integers(0, 10, args.rows), np.ones(args.rows, np.float32)
    train = make_dataset(versions, groups, weights, 64, True, 42, targets)
    val_targets = np.eye(101, dtype=np.float32)[rng.integers(0, 100, 2941)]
    val = make_dataset(rng.standard_normal((2941, 10, 10, 64), dtype=np.float32), rng.integers(0, 10, 2941),
                       np.ones(2941, np.float32), 64, False, 42, val_targets)  # fmt: skip
    model = build_classifier("mobilenet_v2", 160, args.weights, 0.4, None, "ages")
    unfreeze(model, "mobilenet_v2", 74)
    _, trainer = split_at_boundary(model, "block_8_add")
    compile_for(trainer, 6e-5, False, 1.0)
    waits: list[float] = []

    class FirstBatch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.began = time.monotonic()

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:  # the previous epoch's iterator is let go of before this batch
                waits.append(round(time.monotonic() - self.began, 1))

    with tempfile.TemporaryDirectory() as folder:
        wall, cpu = time.monotonic(), time.process_time()
        callbacks = [FirstBatch(), snapshot_callback(Path(folder) / "soup", 0)]
        train, val = _pipeline(train, autotuned), _pipeline(val, autotuned)
        fit(trainer, train, val, args.epochs, None, Path(folder) / "checkpoint", callbacks)
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    return {"fit s": round(wall, 1), "first-batch waits s": waits, "fit CPU s": round(cpu, 1)}


def predict_figures(args: argparse.Namespace, autotuned: bool) -> dict:
    from agerange.model import build_classifier
    from agerange.training.data import array_batches

    model = build_classifier("mobilenet_v2", 160, args.weights, 0.4, None, "ages")
    chips = np.random.default_rng(1).uniform(0, 255, (args.chips, 160, 160, 3)).astype(np.float32)
    seconds = []
    for _ in range(2):
        started = time.monotonic()
        # before: Keras's own pipeline over the array (autotuned); the project: the same batches
        model.predict(chips, batch_size=64, verbose=0) if autotuned else model.predict(
            array_batches(chips, 64), verbose=0
        )
        seconds.append(round(time.monotonic() - started, 1))
    return {"predict s (two calls)": seconds}


if __name__ == "__main__":
    main()
