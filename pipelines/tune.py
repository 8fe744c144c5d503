"""DVC stage `tune` (and the nightly sweep's engine): an Optuna study, every trial tracked in MLflow.

The study is persistent: with `tune.n_trials` (or --add-trials) it runs until the study has that
many finished trials, then writes the best params, which the train stage uses. With 0 trials it
only reads the best of the existing study (params.yaml's values are used while there is none).
"""

import argparse
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from agerange.config import load_params, setup_logging  # noqa: E402
from agerange.files import write_csv, write_json  # noqa: E402
from agerange.train import configure_device, load_split  # noqa: E402
from agerange.tune import (  # noqa: E402
    baseline_params,
    best_params,
    finished_trials,
    make_objective,
    open_study,
    trials_table,
    write_plots,
)

log = logging.getLogger("tune")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="best params JSON (read by the train stage)")
    parser.add_argument("--reports", type=Path, required=True, help="folder for the trials table and plots")
    parser.add_argument("--checkpoints", type=Path, required=True, help="per-trial epoch checkpoints")
    parser.add_argument("--store", type=Path, default=Path("mlruns"))
    parser.add_argument("--storage", help="Optuna storage URL (overrides tune.storage)")
    parser.add_argument("--add-trials", type=int, help="run this many more trials than the study has")
    parser.add_argument("--timeout-minutes", type=float, help="overrides tune.timeout_minutes")
    args = parser.parse_args()
    setup_logging()
    params = load_params("tune")
    storage = args.storage or params["storage"]
    study = open_study(
        storage,
        params["study_name"],
        params["sampler"],
        params["pruner"],
        params["seed"],
        params["heartbeat_seconds"],
    )
    target = params["n_trials"] if args.add_trials is None else finished_trials(study) + args.add_trials
    timeout = 60 * (args.timeout_minutes if args.timeout_minutes is not None else params["timeout_minutes"])

    if finished_trials(study) < target:
        run_sweep(study, target, timeout, params, args)
    best = best_params(study)
    write_json({"study": params["study_name"], **best}, args.out)
    if best["trials"]:
        write_csv(trials_table(study), args.reports / "trials.csv")
    print(
        f"tune: study '{params['study_name']}' has {best['trials']} finished trials; "
        + (f"best validation accuracy {best['best_value']:.4f} with {best['params']}."
           if best["trials"] else "none yet, so training uses params.yaml's values.")
    )  # fmt: skip


def run_sweep(study: optuna.Study, target: int, timeout: float, params: dict, args) -> None:
    """Run trials until the study has `target` finished ones or the time budget is spent."""
    from agerange import tracking  # imported here: reading the best of a study needs no MLflow

    device = configure_device(load_params("train")["mixed_precision"])
    base = load_params("train")
    splits = pd.read_parquet(args.splits)
    started = time.monotonic()
    train_split = load_split(
        splits[splits["split"] == "train"].reset_index(drop=True), args.images, base["image_size"]
    )
    val = load_split(splits[splits["split"] == "val"].reset_index(drop=True), args.images, base["image_size"])
    log.info("decoded %d chips once for the whole sweep in %.1f s", len(train_split.groups) + len(val.groups),
             time.monotonic() - started)  # fmt: skip

    experiment = tracking.use_store(args.store)

    @contextmanager
    def run_trial(number: int, chosen: dict):
        with tracking.start_run(experiment, f"trial-{number}", nested=True):
            tracking.log_params(chosen)
            tracking.set_tags({"optuna.study": study.study_name, "optuna.trial": number})
            try:
                yield tracking.epoch_hook()
                tracking.set_tags({"optuna.state": "complete"})
            except optuna.TrialPruned:
                tracking.set_tags({"optuna.state": "pruned"})
                raise
            except Exception:
                tracking.set_tags({"optuna.state": "failed"})
                raise

    if not study.trials:
        baseline = baseline_params(params["space"], base, load_params("rebalance")["strategy"])
        if baseline is not None:
            study.enqueue_trial(baseline, skip_if_exists=True)
            log.info("queued params.yaml's configuration as the first trial: %s", baseline)
    objective = make_objective(
        train_split, val, params["space"], base, load_params("rebalance"), args.checkpoints, run_trial
    )
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    # One parent run around the whole sweep; each trial is a nested run under it.
    with tracking.start_run(experiment, f"sweep-{study.study_name}"):
        tracking.log_params({k: v for k, v in params.items() if k != "space"}, prefix="tune")
        tracking.log_params(params["space"], prefix="space")
        tracking.set_tags(
            {"git_commit": tracking.git_commit(), **{f"device.{k}": v for k, v in device.items()}}
        )
        study.optimize(
            objective,
            timeout=timeout,
            callbacks=[optuna.study.MaxTrialsCallback(target, states=states)],
            gc_after_trial=True,
            catch=(MemoryError,),
        )
        best = best_params(study)
        if best["trials"]:
            tracking.log_params(best["params"], prefix="best")
            tracking.log_metrics({"best_val_accuracy": best["best_value"], "finished_trials": best["trials"]})
            tracking.log_artifacts(write_plots(study, args.reports), folder="optuna")


if __name__ == "__main__":
    main()
