"""Training throughput: the project's input pipeline and freeze-boundary cache against naive training.

Rows, all in one run, on the same images, model and phase-2 settings (top layers unfrozen):
  naive     - a Python generator re-reads and decodes every JPEG each epoch, one at a time,
              no prefetch; the whole network runs forward each step
  pipeline  - chips decoded once in parallel, tf.data shuffle/batch/prefetch; whole network
  cached    - pipeline + the frozen part's output cached at the freeze boundary, so each
              epoch runs only the unfrozen layers (the CPU default)

    python bench/train_throughput.py [--images data/images] [--n 1024] [--size 160] [--unfreeze 35]
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agerange.config import setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--metadata", type=Path, default=Path("data/metadata.parquet"))
    parser.add_argument("--images", type=Path, default=Path("data/images"))
    parser.add_argument("--weights", type=Path, default=Path("../shared/weights"))
    parser.add_argument("--n", type=int, default=1024, help="training images")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--unfreeze", type=int, default=35)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    setup_logging()  # before TensorFlow is imported: it quiets the notices a CPU run prints

    import keras
    import tensorflow as tf
    from PIL import Image

    from agerange.model import (
        boundary_layer,
        build_classifier,
        first_trainable_index,
        split_at_boundary,
        unfreeze,
    )
    from agerange.preprocess import chip_pixels
    from agerange.training.data import load_split, make_dataset, soft_labels
    from agerange.training.feature_cache import compute_features, frozen_forward

    table = pd.read_parquet(args.metadata).sample(n=args.n, random_state=0).reset_index(drop=True)
    paths = [args.images / p for p in table["path"]]
    labels = soft_labels(table["age_group"].to_numpy(), 0.0)
    steps = int(np.ceil(args.n / args.batch))

    def fresh_model():
        keras.utils.set_random_seed(0)
        model = build_classifier("mobilenet_v2", args.size, args.weights, 0.2)
        unfreeze(model, "mobilenet_v2", args.unfreeze)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")
        return model

    rows = []

    # naive: decode every JPEG every epoch in the training loop's own thread
    def generator():
        while True:
            for start in range(0, args.n, args.batch):
                batch = [
                    chip_pixels(Image.open(p).convert("RGB"), args.size)
                    for p in paths[start : start + args.batch]
                ]
                yield np.stack(batch).astype(np.float32), labels[start : start + args.batch]

    model = fresh_model()
    model.fit(generator(), steps_per_epoch=2, epochs=1, verbose=0)  # warm-up: graph tracing
    started = time.perf_counter()
    model.fit(generator(), steps_per_epoch=steps, epochs=args.epochs, verbose=0)
    rows.append(("naive: re-decode JPEGs each epoch, no prefetch", time.perf_counter() - started, 0.0))

    # pipeline: decode once, in parallel; tf.data with prefetch; whole network each step
    started = time.perf_counter()
    data = load_split(table, args.images, args.size)
    decode_seconds = time.perf_counter() - started
    model = fresh_model()
    dataset = make_dataset(data.chips, data.groups, data.weights, args.batch, True, 0)
    model.fit(dataset.take(2), epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(dataset, epochs=args.epochs, verbose=0)
    rows.append(("pipeline: parallel decode once + prefetch", time.perf_counter() - started, decode_seconds))

    # cached: the frozen part runs once; epochs run the unfrozen layers only
    model = fresh_model()
    cut = boundary_layer(model, first_trainable_index(model))
    bottom, top = split_at_boundary(model, cut)
    started = time.perf_counter()
    features = compute_features(frozen_forward(bottom), data.chips, args.batch)
    cache_seconds = time.perf_counter() - started
    top.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")
    dataset = make_dataset(features, data.groups, data.weights, args.batch, True, 0)
    top.fit(dataset.take(2), epochs=1, verbose=0)
    started = time.perf_counter()
    top.fit(dataset, epochs=args.epochs, verbose=0)
    rows.append(
        (f"cached at {cut} + prefetch", time.perf_counter() - started, decode_seconds + cache_seconds)
    )

    images = args.n * args.epochs
    naive = rows[0][1]
    print(
        f"\nMobileNetV2 phase 2 ({args.unfreeze} layers unfrozen), {args.n} images x {args.epochs} epochs at "
        f"{args.size}px, {tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()} threads\n"
    )
    print(f"| {'method':<46} | {'epoch s':>8} | {'images/s':>9} | {'vs naive':>8} | {'one-time s':>10} |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 11}|{'-' * 10}|{'-' * 12}|")
    for name, seconds, once in rows:
        print(
            f"| {name:<46} | {seconds / args.epochs:>8.2f} | {images / seconds:>9.0f} | "
            f"{naive / seconds:>7.2f}x | {once:>10.1f} |"
        )
    print(
        f"\ntargets: pipeline >= 2x naive images/s (measured {naive / rows[1][1]:.2f}x); "
        f"cached phase-2 epoch >= 4x faster than the full forward pass "
        f"(measured {rows[1][1] / rows[2][1]:.2f}x)"
    )


if __name__ == "__main__":
    main()
