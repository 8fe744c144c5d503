"""DVC stage `tune` (and the nightly sweep's engine): an Optuna study, every trial tracked in MLflow.

The study is persistent: with `tune.n_trials` (or --add-trials) it runs until the study has that
many finished trials. Either way it writes the resolved training configuration (params.yaml's
train and rebalance settings with the study's best applied; params.yaml's alone while the study
has no finished trial), which the rebalance and train stages read.
"""

import argparse
import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pandas as pd

from agerange import provenance, tracking
from agerange.config import (
    ConfigError,
    TuneConfig,
    fail,
    load_section,
    resolve,
    setup_logging,
    write_resolved,
)
from agerange.files import write_csv, write_json
from agerange.rebalance import without_suspected_errors
from agerange.training import configure_device, load_split, realign_recut
from agerange.tune import (
    baseline_params,
    best_params,
    check_choices,
    finished_trials,
    keep_study_file,
    make_objective,
    open_study,
    queue_first_trials,
    settle_dead_trials,
    trials_table,
    write_plots,
)

log = logging.getLogger("tune")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the resolved training configuration (JSON)")
    parser.add_argument("--reports", type=Path, required=True, help="folder for the trials table and plots")
    parser.add_argument("--checkpoints", type=Path, required=True, help="per-trial epoch checkpoints")
    parser.add_argument(
        "--drop", type=Path, help="images the trials leave out of training (the label check's list)"
    )
    tracking.add_store_argument(parser)
    parser.add_argument("--storage", help="Optuna storage URL (overrides tune.storage)")
    parser.add_argument(
        "--study-file",
        type=Path,
        help="SQLite file that keeps the study for DVC (a copy if stored elsewhere)",
    )
    parser.add_argument("--add-trials", type=int, help="run this many more trials than the study has")
    parser.add_argument("--timeout-minutes", type=float, help="overrides tune.timeout_minutes")
    args = parser.parse_args()
    setup_logging()
    try:
        tune, train, rebalance = (load_section(name) for name in ("tune", "train", "rebalance"))
        check_choices(tune, train, rebalance)
    except ConfigError as error:
        fail(str(error))
    if args.drop is not None and not args.drop.is_file():
        fail(f"{args.drop}: the label check's list of images to leave out is missing (dvc repro label_check)")
    storage = args.storage or tune.storage
    try:  # the study's URL is logged with the sweep: its password belongs in PGPASSWORD or ~/.pgpass
        tracking.refuse_password(storage, "Optuna storage")
    except tracking.StoreError as error:
        fail(str(error))
    study = open_study(storage, tune.study_name, tune.sampler, tune.pruner, tune.seed,
                       tune.heartbeat_seconds)  # fmt: skip
    target = tune.n_trials if args.add_trials is None else finished_trials(study) + args.add_trials
    minutes = args.timeout_minutes if args.timeout_minutes is not None else tune.timeout_minutes
    if finished_trials(study) < target:
        run_sweep(study, target, 60 * minutes, tune, args)
    best = best_params(study)
    if args.study_file:
        keep_study_file(storage, tune.study_name, args.study_file)
    write_resolved(resolve(train, rebalance, best["params"]), args.out)
    write_json({"study": tune.study_name, **best}, args.reports / "best.json")
    if best["trials"]:
        write_csv(trials_table(study), args.reports / "trials.csv")
    print(
        f"tune: study '{tune.study_name}' has {best['trials']} finished trials; "
        + (f"best validation accuracy {best['best_value']:.4f} with {best['params']}."
           if best["params"] else "none complete yet, so training uses params.yaml's values.")
    )  # fmt: skip


def run_sweep(study: optuna.Study, target: int, timeout: float, tune: TuneConfig, args) -> None:
    """Run trials until the study has `target` finished ones or the time budget is spent."""
    train, rebalance, package = (load_section(name) for name in ("train", "rebalance", "package"))
    device = configure_device(train.mixed_precision, train.deterministic, train.threads)
    splits = pd.read_parquet(args.splits)
    tables = {side: splits[splits["split"] == side].reset_index(drop=True) for side in ("train", "val")}
    if args.drop is not None:  # trials train on the train stage's rows (validation is never filtered)
        kept = without_suspected_errors(tables["train"], pd.read_csv(args.drop))
        tables["train"] = kept.reset_index(drop=True)
    started = time.monotonic()
    train_split, val = (load_split(tables[side], args.images, train.image_size) for side in ("train", "val"))
    log.info("decoded %d chips once for the whole sweep in %.1f s", len(train_split.groups) + len(val.groups),
             time.monotonic() - started)  # fmt: skip
    experiment = tracking.use_store(args.store)
    queue_first_trials(study, baseline_params(tune.space, train, rebalance.strategy))
    recut = realign_recut(train, package)
    run_trial = _trial_run(experiment, study)
    objective = make_objective(train_split, val, tune.space, train, rebalance, args.checkpoints, run_trial,
                               recut, bool(device["xla"]))  # fmt: skip
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    # One parent run around the whole sweep; each trial is a nested run under it.
    with tracking.start_run(experiment, f"sweep-{study.study_name}"):
        settings = dataclasses.asdict(tune)
        tracking.log_params({k: v for k, v in settings.items() if k != "space"}, prefix="tune")
        tracking.log_params(settings["space"], prefix="space")
        tracking.set_tags(
            {"git_commit": provenance.git_commit(), **{f"device.{k}": v for k, v in device.items()}}
        )
        study.optimize(objective, timeout=timeout, gc_after_trial=True, catch=(MemoryError,),
                       callbacks=[optuna.study.MaxTrialsCallback(target, states=states)])  # fmt: skip
        # a killed worker's trial still inside its grace period would otherwise stay running
        if failed := settle_dead_trials(study, tune.heartbeat_seconds):
            log.info("failed the trials of workers that died: %s (their params are queued again)", failed)
            tracking.end_runs_of_failed_trials(experiment, study.study_name, set(failed))
        best = best_params(study)
        if best["params"]:
            tracking.log_params(best["params"], prefix="best")
            tracking.log_metrics({"best_val_accuracy": best["best_value"], "finished_trials": best["trials"]})
            tracking.log_artifacts(write_plots(study, args.reports), folder="optuna")


def _trial_run(experiment: str, study: optuna.Study):
    """A context manager factory: a nested MLflow run per trial, tagged with how the trial ended."""
    study_name = study.study_name

    @contextmanager
    def run_trial(number: int, chosen: dict) -> Iterator:
        # Optuna has just failed the trials of workers that stopped sending heartbeats (killed):
        # end the MLflow runs they left open, so the UI does not show them running forever
        failed = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))}
        tracking.end_runs_of_failed_trials(experiment, study_name, failed)
        with tracking.start_run(experiment, f"trial-{number}", nested=True):
            tracking.log_params(chosen)
            tracking.set_tags({"optuna.study": study_name, "optuna.trial": number})
            try:
                yield tracking.epoch_hook()
                tracking.set_tags({"optuna.state": "complete"})
            except optuna.TrialPruned:
                tracking.set_tags({"optuna.state": "pruned"})
                raise
            except Exception:
                tracking.set_tags({"optuna.state": "failed"})
                raise

    return run_trial


if __name__ == "__main__":
    main()
