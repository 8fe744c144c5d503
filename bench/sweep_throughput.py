"""Sweep throughput: the project's Optuna sweep against a naive Optuna loop, same trials and space.

  naive    - every trial re-reads and decodes the JPEGs, trains the whole network each epoch
             (no freeze-boundary cache), and is never pruned
  agerange - chips decoded once for the study, the frozen part cached once per backbone and
             shared by all trials, median pruning on the per-epoch validation accuracy

Both run the same number of trials with the same seeded sampler over the same search space,
in the same process, one after the other. Prints trials per hour and the ratio.

    python bench/sweep_throughput.py [--trials 6] [--n-train 1200] [--n-val 400] [--size 160]
"""

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd

from agerange.config import RebalanceConfig, TrainConfig, TuneSpace, resolve, setup_logging

SPACE = TuneSpace(
    backbone=["mobilenet_v2"],
    unfreeze_layers={"mobilenet_v2": [10, 40]},
    head_learning_rate=[0.0005, 0.003],
    finetune_learning_rate=[0.00003, 0.0003],
    dropout=[0.1, 0.5],
    rebalance_strategy=["undersample", "none"],
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--splits", type=Path, default=Path("data/splits.parquet"))
    parser.add_argument("--images", type=Path, default=Path("data/images"))
    parser.add_argument("--weights", type=Path, default=Path("../shared/weights"))
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--n-val", type=int, default=400)
    parser.add_argument("--size", type=int, default=160, help="chip side; 160 is train.image_size")
    parser.add_argument("--epochs", type=int, default=3, help="per phase")
    args = parser.parse_args()
    setup_logging()  # before TensorFlow is imported: it quiets the notices a CPU run prints

    import keras

    from agerange.training import TrainData, TrainOptions, load_split, train
    from agerange.tune import make_objective, suggest, training_rows

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    splits = pd.read_parquet(args.splits)
    train_rows = (
        splits[splits["split"] == "train"].sample(n=args.n_train, random_state=0).reset_index(drop=True)
    )
    val_rows = splits[splits["split"] == "val"].sample(n=args.n_val, random_state=0).reset_index(drop=True)
    base = TrainConfig(
        backbone="mobilenet_v2", weights_dir=str(args.weights), weights_sha256=None, image_size=args.size,
        unfreeze_layers=20, dropout=0.3, head_learning_rate=1e-3, finetune_learning_rate=1e-4,
        head_epochs=args.epochs, finetune_epochs=args.epochs, patience=args.epochs, batch_size=64,
        neighbour_smoothing=0.2, age_sigma=0.0, augment=False, realign=False, weight_soup=False,
        finetune_runs=1, ensemble_members=1, mixed_precision="off", seed=1,
        # the group head and no real-photo variants: both sides train the same, uncached, model
        head="groups", age_loss_weight=0.0, augment_variants=0, augment_strength=0.0,
        deterministic="off", threads=0,
    )  # fmt: skip
    rebalance = RebalanceConfig(strategy="undersample", max_per_group=150, seed=0)  # strategy: tuned
    checkpoints = Path(tempfile.mkdtemp())

    def naive_objective(trial: optuna.Trial) -> float:
        keras.backend.clear_session()
        chosen = suggest(trial, SPACE)
        train_split = load_split(train_rows, args.images, args.size, workers=1)  # JPEGs every trial
        val = load_split(val_rows, args.images, args.size, workers=1)
        resolved = resolve(base, rebalance, chosen)  # as the study's objective builds its configuration
        rows = training_rows(train_split, resolved.rebalance)
        # augment: the whole network runs on every image each epoch, no freeze-boundary cache
        options = TrainOptions(checkpoint_dir=checkpoints / f"naive_{trial.number}", augment=True)
        result = train(resolved.train, TrainData(rows, val), options)
        return float(result.history["val_accuracy"].max())

    def sampler():
        return optuna.samplers.TPESampler(seed=7, n_startup_trials=3)

    rows = []
    started = time.perf_counter()
    naive = optuna.create_study(direction="maximize", sampler=sampler(), pruner=optuna.pruners.NopPruner())
    naive.optimize(naive_objective, n_trials=args.trials)
    rows.append(("naive: decode per trial, full network, no pruning", time.perf_counter() - started, naive))

    @contextlib.contextmanager
    def no_tracking(number, chosen):
        yield lambda phase, epoch, metrics: None

    started = time.perf_counter()
    train_split = load_split(train_rows, args.images, args.size)
    val = load_split(val_rows, args.images, args.size)
    objective = make_objective(train_split, val, SPACE, base, rebalance, checkpoints, no_tracking)
    ours = optuna.create_study(
        direction="maximize", sampler=sampler(),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
    )  # fmt: skip
    ours.optimize(objective, n_trials=args.trials)
    rows.append(("agerange: decode once, shared cache, pruning", time.perf_counter() - started, ours))

    print(
        f"\n{args.trials} trials each, {args.n_train} training / {args.n_val} validation images "
        f"at {args.size}px, up to {args.epochs}+{args.epochs} epochs per trial\n"
    )
    print(f"| {'method':<50} | {'seconds':>8} | {'trials/hour':>11} | {'best val acc':>12} | {'pruned':>6} |")
    print(f"|{'-' * 52}|{'-' * 10}|{'-' * 13}|{'-' * 14}|{'-' * 8}|")
    for name, seconds, study in rows:
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
        print(f"| {name:<50} | {seconds:>8.1f} | {3600 * args.trials / seconds:>11.1f} | "
              f"{study.best_value:>12.3f} | {pruned:>6} |")  # fmt: skip
    print(f"\ntarget: at least 5x trials per hour; measured {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
