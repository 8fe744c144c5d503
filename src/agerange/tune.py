"""Tuning: an Optuna study over backbone, unfrozen layers, learning rates, dropout and rebalancing.

The data is decoded once, outside the objective; the frozen part's output is cached at the
lowest freeze boundary the search space can ask for and shared by every trial of a backbone.
Trials are pruned on their per-epoch validation accuracy. The study lives in an RDB storage
(SQLite by default, PostgreSQL to share it between workers) and survives being killed:
finished trials are kept, and a trial whose worker died is marked failed and retried.
"""

import contextlib
import dataclasses
import logging
import os
import random
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from agerange.backbones import BACKBONES
from agerange.config import (
    TUNED_CHOICES,
    ConfigError,
    RebalanceConfig,
    TrainConfig,
    TuneConfig,
    TuneSpace,
    resolve,
)
from agerange.files import atomic_path
from agerange.rebalance import STRATEGIES, rebalance
from agerange.training import FeatureCache, SplitData, TrainData, TrainOptions, train
from agerange.training.feature_cache import Recut

log = logging.getLogger(__name__)

SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
PRUNERS = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
    "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=2),
    "none": optuna.pruners.NopPruner,
}


def check_choices(tune: TuneConfig, train: TrainConfig, rebalance_settings: RebalanceConfig) -> None:
    """Refuse a named choice that does not exist (backbone, strategy, sampler, pruner) in one line,
    before the sweep or the training decodes anything."""
    named = [
        ("train.backbone", train.backbone, BACKBONES),
        ("rebalance.strategy", rebalance_settings.strategy, STRATEGIES),
        ("tune.sampler", tune.sampler, SAMPLERS),
        ("tune.pruner", tune.pruner, PRUNERS),
        *((f"tune.space.backbone[{i}]", name, BACKBONES) for i, name in enumerate(tune.space.backbone)),
        *((f"tune.space.rebalance_strategy[{i}]", name, STRATEGIES)
          for i, name in enumerate(tune.space.rebalance_strategy)),
    ]  # fmt: skip
    for where, name, known in named:
        if name not in known:
            raise ConfigError(f"params.yaml: {where}: unknown '{name}' (valid: {', '.join(known)})")
    for name in tune.space.backbone:
        if name not in tune.space.unfreeze_layers:
            raise ConfigError(
                f"params.yaml: tune.space.unfreeze_layers: no [low, high] for backbone '{name}'"
            )


def _by_name(registry: dict, name: str, what: str):
    if name not in registry:
        raise ValueError(f"unknown {what} '{name}' (valid: {', '.join(registry)})")
    return registry[name]


@contextlib.contextmanager
def _removed_when_done(folder: Path):
    """Delete a trial's checkpoints when it ends in Python (complete, pruned or failed).

    Trials are not resumed from their checkpoints (a dead worker's trial is retried under a new
    number), so nothing in the folder is needed once the trial has ended. Without this, every
    pruned trial left its phase-1 weights and weight-soup snapshots behind.
    """
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class TrialSeeded(optuna.samplers.BaseSampler):
    """`make(seed + trial number)`, a sampler of its own for each trial.

    A sampler seeded once draws the same numbers in every process: a resumed sweep (tomorrow's
    night) would replay its first trials, and workers started together on one study would
    suggest the same settings side by side. The storage gives every trial of a study its own
    number, so seeding by it gives each trial its own draws (given the study's other trials),
    and one worker on an empty study still reproduces from `seed` alone.
    """

    def __init__(self, make: Callable[..., optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._by_trial: dict[int, optuna.samplers.BaseSampler] = {}

    def _of(self, trial) -> optuna.samplers.BaseSampler:
        if trial.number not in self._by_trial:
            self._by_trial[trial.number] = self._make(seed=self._seed + trial.number)
        return self._by_trial[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self._of(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._of(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._of(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._of(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._of(trial).after_trial(study, trial, state, values)
        del self._by_trial[trial.number]


# What a trial's value means. 1: the best validation accuracy of any epoch, phase 1's included,
# though the trial's model may no longer hold those weights; 2: the validation accuracy of the
# model the trial returns (`TrainResult.val_accuracy`), what the train stage would ship. A study
# carries on night after night, so each trial records its version and `best_params` compares
# only trials of one version.
OBJECTIVE_VERSION = 2
MISSED_HEARTBEATS = 3  # a running trial silent this long is its dead worker's: failed and retried


def open_study(
    storage_url: str, study_name: str, sampler: str, pruner: str, seed: int, heartbeat_seconds: int = 10
) -> optuna.Study:
    """Create or load a study in an RDB storage, with heartbeats so dead workers' trials are retried.

    A running trial whose worker sent no heartbeat for three intervals is marked failed when a
    worker next starts a trial, and its params are queued again once (a killed sweep loses no
    finished trial and repeats none). Each trial draws its own settings (`TrialSeeded`), also
    on workers started together.
    """
    import sqlalchemy.exc

    for attempt in range(6):
        try:
            storage = optuna.storages.RDBStorage(
                storage_url,
                heartbeat_interval=heartbeat_seconds,
                grace_period=MISSED_HEARTBEATS * heartbeat_seconds,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
                engine_kwargs={"pool_pre_ping": True},
            )
            return optuna.create_study(
                study_name=study_name,
                storage=storage,
                direction="maximize",
                sampler=TrialSeeded(_by_name(SAMPLERS, sampler, "sampler"), seed),
                pruner=_by_name(PRUNERS, pruner, "pruner")(),
                load_if_exists=True,
            )
        except sqlalchemy.exc.SQLAlchemyError as error:
            # Workers starting together on an empty database race to create its tables:
            # the loser sees a duplicate-key error and simply tries again.
            if attempt == 5:
                raise
            log.info("storage not ready (%s); retrying", type(error).__name__)
            time.sleep(0.5 + random.random() * 2)
    raise AssertionError("unreachable")


def keep_study_file(storage_url: str, study_name: str, path: Path) -> None:
    """Leave the study in the SQLite file `path`, which DVC versions and pushes with the configuration
    it chose (so a clone's `dvc pull` gets the same best trial): the default storage is that file; a
    study elsewhere (a team's PostgreSQL) is copied into it."""
    in_place = Path(storage_url.removeprefix("sqlite:///")).resolve() == Path(path).resolve()
    if storage_url.startswith("sqlite:///") and in_place:
        return
    with atomic_path(Path(path)) as temporary:
        optuna.copy_study(
            from_study_name=study_name, from_storage=storage_url, to_storage=f"sqlite:///{temporary}"
        )


def suggest(trial: optuna.Trial, space: TuneSpace) -> dict[str, Any]:
    """One point of the search space (params.yaml `tune.space`)."""
    backbone = trial.suggest_categorical("backbone", space.backbone)
    low, high = space.unfreeze_layers[backbone]
    # a setting is a choice only when the space offers two: studies made before it was one stay valid
    choices = {
        key: trial.suggest_categorical(key, getattr(space, key))
        for key in TUNED_CHOICES
        if len(getattr(space, key)) > 1
    }
    return {
        "backbone": backbone,
        "unfreeze_layers": trial.suggest_int("unfreeze_layers", low, high),
        "head_learning_rate": trial.suggest_float("head_learning_rate", *space.head_learning_rate, log=True),
        "finetune_learning_rate": trial.suggest_float(
            "finetune_learning_rate", *space.finetune_learning_rate, log=True
        ),
        "dropout": trial.suggest_float("dropout", *space.dropout),
        "rebalance_strategy": trial.suggest_categorical("rebalance_strategy", space.rebalance_strategy),
        **choices,
    }


def baseline_params(space: TuneSpace, train: TrainConfig, strategy: str) -> dict[str, Any] | None:
    """params.yaml's own configuration as a point of the space, or None when it lies outside it.

    Queued as the first trial of a new study, so the study's best (which the train stage
    uses) is never worse on validation than training with params.yaml's values.
    """
    point = {
        key: getattr(train, key)
        for key in ("backbone", "unfreeze_layers", "head_learning_rate", "finetune_learning_rate", "dropout")
    }
    point["rebalance_strategy"] = strategy
    offered = [key for key in TUNED_CHOICES if len(getattr(space, key)) > 1]
    point.update({key: getattr(train, key) for key in offered})
    low, high = space.unfreeze_layers.get(point["backbone"], (None, None))
    inside = (
        point["backbone"] in space.backbone
        and low is not None and low <= point["unfreeze_layers"] <= high
        and all(getattr(space, key)[0] <= point[key] <= getattr(space, key)[1]
                for key in ("head_learning_rate", "finetune_learning_rate", "dropout"))
        and strategy in space.rebalance_strategy
        and all(getattr(train, key) in getattr(space, key) for key in offered)
    )  # fmt: skip
    return point if inside else None


def training_rows(train_split: SplitData, settings: RebalanceConfig) -> SplitData:
    """Rebalance the (already decoded) training split without decoding anything again."""
    table = train_split.table.assign(_row=np.arange(len(train_split.table)))
    balanced = rebalance(table, settings.strategy, settings.max_per_group, settings.seed)
    rows = balanced["_row"].to_numpy()
    return SplitData(
        train_split.chips[rows],
        train_split.groups[rows],
        balanced["weight"].to_numpy(np.float32),
        balanced.drop(columns="_row").reset_index(drop=True),
    )


def make_objective(
    train_split: SplitData,
    val: SplitData,
    space: TuneSpace,
    base: TrainConfig,
    base_rebalance: RebalanceConfig,
    checkpoint_root: Path,
    run_trial: Callable,
    recut: Recut | None = None,
    jit: bool = False,
) -> Callable[[optuna.Trial], float]:
    """The objective: train one configuration, report each epoch, return the validation accuracy of
    the model it trained (objective version `OBJECTIVE_VERSION`).

    Args:
        train_split, val: decoded once, before the study starts.
        space: the search space.
        base, base_rebalance: params.yaml's train and rebalance settings (everything not tuned).
        checkpoint_root: per-trial checkpoint folders live under it.
        run_trial: context manager factory (trial number, params) -> hook, provided by the
            entry point (it opens a nested MLflow run); the hook receives each epoch's metrics.
        recut: the re-cut function for `train.realign` (see `training.feature_cache.Recut`).
        jit: compile with XLA (on a GPU, as the train stage does).
    """
    feature_cache = FeatureCache()
    deepest = {name: high for name, (_, high) in space.unfreeze_layers.items()}

    def objective(trial: optuna.Trial) -> float:
        import keras

        keras.backend.clear_session()  # one graph per trial, or memory grows with every trial
        # which worker ran it (host and process): workers on several hosts share one study
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("objective_version", OBJECTIVE_VERSION)
        chosen = suggest(trial, space)
        # the same function builds the train stage's configuration from the study's best
        resolved = resolve(base, base_rebalance, chosen)
        rows = training_rows(train_split, resolved.rebalance)
        checkpoint_dir = checkpoint_root / f"trial_{trial.number}"
        with run_trial(trial.number, chosen) as log_epoch, _removed_when_done(checkpoint_dir):

            def on_epoch(phase: str, epoch: int, metrics: dict[str, float]) -> None:
                log_epoch(phase, epoch, metrics)
                trial.report(metrics["val_accuracy"], step=epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")

            options = TrainOptions(
                checkpoint_dir=checkpoint_dir, on_epoch=on_epoch, jit=jit, recut=recut,
                feature_cache=feature_cache, cache_unfreeze_layers=deepest.get(resolved.train.backbone),
                label=f"trial {trial.number}",
            )  # fmt: skip
            # a trial trains one model with one fine-tuning run (the train stage may do more)
            config = dataclasses.replace(resolved.train, ensemble_members=1, finetune_runs=1)
            result = train(config, TrainData(rows, val), options)
        return result.val_accuracy

    return objective


def best_params(study: optuna.Study) -> dict[str, Any]:
    """The best complete trial of this objective version (`OBJECTIVE_VERSION`): its params and
    value, or an empty result when none finished.

    Trials measured by another objective are not compared with today's (their values mean
    something else); the best of the newest older version stands in only while no trial of
    today's objective has completed (`queue_first_trials` queues its settings to be measured
    again first).
    """
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    newest = max((v for v in map(objective_version, complete) if v <= OBJECTIVE_VERSION), default=None)
    candidates = [t for t in complete if objective_version(t) == newest]
    finished = finished_trials(study)
    if not candidates:
        return {"trials": finished, "best_value": None, "params": {}}
    best = max(candidates, key=lambda t: t.value)
    return {
        "trials": finished,
        "best_trial": best.number,
        "best_value": best.value,
        "objective_version": objective_version(best),
        "params": best.params,
    }


def queue_first_trials(study: optuna.Study, baseline: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Queue what a study measures before it samples; returns the queued settings.

    A study with no trial of today's objective (`OBJECTIVE_VERSION`; one that failed does not
    count) first measures params.yaml's configuration (`baseline`), so the best the train stage
    takes is never worse on validation than params.yaml's own, and, when older trials have a
    best, those settings again: old values are not compared with new ones (`best_params`).
    Called when a sweep starts. Workers that start at the same moment may each queue them
    (a trial or two spent twice, no wrong result); one started later sees them queued.
    """
    states = (
        optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING,
    )  # fmt: skip
    todays = [
        t
        for t in study.get_trials(deepcopy=False, states=states)
        if objective_version(t) == OBJECTIVE_VERSION
    ]
    if todays:
        return []
    old_best = best_params(study)["params"]
    queue = [params for params in (old_best, baseline) if params]
    if len(queue) == 2 and queue[0] == queue[1]:
        queue = queue[:1]
    for params in queue:
        # tagged when queued, so a worker that starts later sees that today's objective has
        # trials; in a study with no trials yet a second worker's copy is skipped
        study.enqueue_trial(
            params, user_attrs={"objective_version": OBJECTIVE_VERSION}, skip_if_exists=not study.trials
        )
        log.info("queued to measure first (objective version %d): %s", OBJECTIVE_VERSION, params)
    return queue


def objective_version(trial: optuna.trial.FrozenTrial) -> int:
    """The objective version that measured a trial; trials from before the tag are version 1."""
    return int(trial.user_attrs.get("objective_version", 1))


def settle_dead_trials(study: optuna.Study, heartbeat_seconds: float, poll_seconds: float = 1.0) -> list[int]:
    """Fail the running trials of dead workers before a sweep ends; returns their numbers.

    Optuna fails a trial whose heartbeat went stale only when a worker next starts a trial. A
    worker that reaches the target while a killed worker's trial is still inside its grace
    period would start none, and leave that trial running in the study for good. So the last
    worker waits (at most the grace period, MISSED_HEARTBEATS of the study's heartbeats, and
    only while trials are running) until each running trial either ends or goes stale; stale
    ones are failed and their params queued again (`open_study`'s retry), for the next sweep
    that needs trials. Live workers' trials are left to their workers.
    """
    import warnings

    failed = []
    # a little past the grace period, so that a trial that went silent just now is seen stale
    deadline = time.monotonic() + MISSED_HEARTBEATS * heartbeat_seconds + 2 * poll_seconds
    while True:
        running_state = (optuna.trial.TrialState.RUNNING,)
        running = {t.number for t in study.get_trials(deepcopy=False, states=running_state)}
        with warnings.catch_warnings():  # what Optuna runs at each trial start, marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        failed += [number for number in running if states[number] == optuna.trial.TrialState.FAIL]
        still_running = [number for number in running if states[number] == optuna.trial.TrialState.RUNNING]
        if not still_running or time.monotonic() >= deadline:
            return sorted(failed)
        time.sleep(poll_seconds)


def finished_trials(study: optuna.Study) -> int:
    """Complete and pruned trials, of every objective version."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def trials_table(study: optuna.Study) -> pd.DataFrame:
    return study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optimisation history, parameter importances and unfrozen layers x learning rate, as HTML."""
    from optuna import visualization as vis

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    plots = {
        "optimization_history.html": lambda: vis.plot_optimization_history(study),
        "param_importances.html": lambda: vis.plot_param_importances(study),
        "unfreeze_layers_x_finetune_lr.html": lambda: vis.plot_contour(
            study, params=["unfreeze_layers", "finetune_learning_rate"]
        ),
    }
    for name, plot in plots.items():
        try:
            plot().write_html(folder / name, include_plotlyjs=True)  # offline: embed plotly.js
            written.append(folder / name)
        except (ValueError, RuntimeError) as error:  # too few finished trials for this plot
            log.info("skipped %s: %s", name, error)
    return written
