"""Tuning helpers that need no training."""

import optuna
import pytest

from agerange.tune import _removed_when_done


def test_a_pruned_trial_leaves_no_checkpoints(tmp_path):
    folder = tmp_path / "trial_3"
    with pytest.raises(optuna.TrialPruned), _removed_when_done(folder):
        (folder / "soup").mkdir(parents=True)
        (folder / "soup" / "epoch_009.npz").write_bytes(b"weights")
        raise optuna.TrialPruned("pruned at epoch 9")
    assert not folder.exists()


def test_the_sweep_chooses_the_head_only_when_the_space_offers_two(tmp_path):
    import dataclasses

    from agerange.config import load_section, resolve
    from agerange.tune import baseline_params, suggest
    from tests.conftest import PROJECT_ROOT

    params = PROJECT_ROOT / "params.yaml"
    space = load_section("tune", params).space
    train, rebalance = load_section("train", params), load_section("rebalance", params)
    point = {
        "backbone": "mobilenet_v2", "unfreeze_layers": 40, "head_learning_rate": 1e-3,
        "finetune_learning_rate": 1e-4, "dropout": 0.3, "rebalance_strategy": "undersample",
    }  # fmt: skip
    assert "head" not in suggest(optuna.trial.FixedTrial(point), dataclasses.replace(space, head=["groups"]))
    both = dataclasses.replace(space, head=["groups", "ages"])
    chosen = suggest(optuna.trial.FixedTrial({**point, "head": "ages"}), both)
    assert chosen["head"] == "ages"
    assert resolve(train, rebalance, chosen).train.head == "ages"  # the trial trains that head
    assert baseline_params(both, train, rebalance.strategy)["head"] == train.head
    # one head offered: train.head applies whatever it is, and params.yaml's point stays a trial
    ages_only = dataclasses.replace(train, head="ages")
    assert baseline_params(dataclasses.replace(space, head=["groups"]), ages_only, rebalance.strategy)
    # the real-photo variants' strength and number are choices the same way
    augmented = dataclasses.replace(space, augment_variants=[0, 2], augment_strength=[0.3, 0.8])
    picked = suggest(
        optuna.trial.FixedTrial({**point, "augment_variants": 0, "augment_strength": 0.8}), augmented
    )
    assert (picked["augment_variants"], picked["augment_strength"]) == (0, 0.8)
    assert resolve(train, rebalance, picked).train.augment_strength == 0.8
    # params.yaml's 2 variants at 0.5 are not among these choices: its point is not queued
    assert baseline_params(augmented, train, rebalance.strategy) is None


def test_the_study_file_dvc_versions_is_the_storage_itself_or_a_copy_of_a_study_kept_elsewhere(tmp_path):
    from agerange.tune import keep_study_file

    elsewhere = f"sqlite:///{tmp_path}/team.db"  # stands for a team's PostgreSQL study
    study = optuna.create_study(study_name="agerange", storage=elsewhere, direction="maximize")
    for value in (0.4, 0.6):
        study.add_trial(optuna.trial.create_trial(params={"dropout": value}, distributions={
            "dropout": optuna.distributions.FloatDistribution(0, 1)}, value=value))  # fmt: skip
    keep_study_file(elsewhere, "agerange", tmp_path / "data" / "optuna.db")
    copy = optuna.load_study(study_name="agerange", storage=f"sqlite:///{tmp_path}/data/optuna.db")
    assert copy.best_params == {"dropout": 0.6} and len(copy.trials) == 2

    before = (tmp_path / "team.db").stat().st_mtime_ns
    keep_study_file(elsewhere, "agerange", tmp_path / "team.db")  # the storage is that file: left alone
    assert (tmp_path / "team.db").stat().st_mtime_ns == before


def test_a_sweep_that_ends_fails_a_dead_workers_trial_and_queues_it_again_but_leaves_a_live_one(
    tmp_path, monkeypatch
):
    """A worker that reaches its target while a killed worker's trial is still inside the grace
    period must not leave that trial running in the study for good."""
    import threading
    import time

    from agerange.tune import open_study, settle_dead_trials

    study = open_study(f"sqlite:///{tmp_path / 'study.db'}", "s", "tpe", "median", 0, heartbeat_seconds=2)
    storage = study._storage
    dead, live = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), study.ask()
    storage.record_heartbeat(dead._trial_id)  # beat once, then the worker is killed
    stop = threading.Event()

    def beat():  # a worker still alive, as Optuna's heartbeat thread keeps it
        while not stop.is_set():
            storage.record_heartbeat(live._trial_id)
            stop.wait(0.5)

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        assert settle_dead_trials(study, heartbeat_seconds=2, poll_seconds=0.5) == [dead.number]
    finally:
        stop.set()
        beating.join()
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[dead.number] == optuna.trial.TrialState.FAIL
    # it returned while the live trial was still running: its own worker ends it
    assert states[live.number] == optuna.trial.TrialState.RUNNING
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    queued = [t for t in study.get_trials(deepcopy=False) if retry(t) == dead.number]
    assert [t.state for t in queued] == [optuna.trial.TrialState.WAITING]
    assert queued[0].params == dead.params

    # with nothing running, a sweep ends without waiting
    study.tell(live, 0.5)

    def no_waiting(seconds):
        raise AssertionError(f"waited {seconds} s with no trial running")

    monkeypatch.setattr(time, "sleep", no_waiting)
    assert settle_dead_trials(study, heartbeat_seconds=2) == []


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_resumed_sweep_draws_new_trials_instead_of_replaying_the_first_ones(tmp_path, sampler):
    """Each night opens the study in a new process with the same `tune.seed`: the second night
    must not suggest the first night's settings again, and an empty study still reproduces."""
    from agerange.tune import open_study

    def objective(trial):
        return trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True) + trial.suggest_float(
            "dropout", 0.1, 0.5
        )

    def night(url):
        study = open_study(url, "nightly", sampler, "none", seed=11, heartbeat_seconds=1)
        study.optimize(objective, n_trials=3)
        return study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    first = night(f"sqlite:///{tmp_path}/a.db")
    again = night(f"sqlite:///{tmp_path}/b.db")
    settings = [tuple(trial.params.values()) for trial in night(f"sqlite:///{tmp_path}/a.db").trials]
    assert [tuple(t.params.values()) for t in first.trials[:3]] == [
        tuple(t.params.values()) for t in again.trials
    ]
    assert len(set(settings)) == 6, "the second night repeated the first night's trials"


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_workers_started_together_on_one_study_draw_different_settings(tmp_path, sampler):
    """Two workers open the study at the same moment, with the same `tune.seed`, and each asks
    for trials before any finishes: they must not suggest the same settings side by side."""
    from agerange.tune import open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path}/team.db"
    workers = [open_study(url, "team", sampler, "none", seed=11, heartbeat_seconds=1) for _ in range(2)]
    drawn = []
    for _ in range(3):
        for study in workers:  # in turn, none told yet: the same history for every draw
            trial = study.ask()
            drawn.append((trial.number, trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)))
    assert len({value for _, value in drawn}) == 6, "workers started together drew the same settings"
    # each trial's draw depends on its number (and the trials finished before it), not on the worker
    alone = open_study(
        f"sqlite:///{tmp_path}/alone.db", "team", sampler, "none", seed=11, heartbeat_seconds=1
    )
    replayed = [(t.number, t.suggest_float("learning_rate", 1e-4, 1e-2, log=True)) for t in
                (alone.ask() for _ in range(6))]  # fmt: skip
    assert replayed == drawn


def test_a_study_measured_by_an_older_objective_measures_its_best_again_and_compares_only_like_values(
    tmp_path,
):
    """Trials from before the objective changed carry no version tag (version 1, the best epoch
    of either phase): their values are not compared with today's, and their best settings and
    params.yaml's are measured again before the sweep samples anything new."""
    from agerange.tune import OBJECTIVE_VERSION, best_params, open_study, queue_first_trials

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(url, "nightly", "tpe", "none", seed=0, heartbeat_seconds=1)
    dropout = {"dropout": optuna.distributions.FloatDistribution(0, 1)}
    for value, old_value in ((0.2, 0.61), (0.4, 0.64)):  # last month's trials, no tag
        old = optuna.trial.create_trial(params={"dropout": value}, distributions=dropout, value=old_value)
        study.add_trial(old)
    assert best_params(study)["params"] == {"dropout": 0.4}  # nothing newer yet: the old best stands in
    assert best_params(study)["objective_version"] == 1

    queued = queue_first_trials(study, baseline={"dropout": 0.3})
    assert queued == [{"dropout": 0.4}, {"dropout": 0.3}]
    # a second worker opening the study now queues nothing more: the queued trials are tagged
    assert queue_first_trials(open_study(url, "nightly", "tpe", "none", 0, 1), {"dropout": 0.3}) == []

    def objective(trial):
        trial.set_user_attr("objective_version", OBJECTIVE_VERSION)
        # today's objective measures lower than the old one for the same settings
        return {0.4: 0.58, 0.3: 0.60}[trial.suggest_float("dropout", 0, 1)]

    study.optimize(objective, n_trials=2)
    best = best_params(study)
    assert (best["params"], best["best_value"], best["objective_version"]) == ({"dropout": 0.3}, 0.60, 2)
    assert best["trials"] == 4
    assert queue_first_trials(study, {"dropout": 0.3}) == []  # measured: nothing to queue again


def test_a_new_study_queues_params_yamls_configuration_once(tmp_path):
    from agerange.tune import best_params, open_study, queue_first_trials

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(url, "nightly", "tpe", "none", seed=0, heartbeat_seconds=1)
    assert best_params(study) == {"trials": 0, "best_value": None, "params": {}}
    assert queue_first_trials(study, {"dropout": 0.3}) == [{"dropout": 0.3}]
    assert queue_first_trials(study, {"dropout": 0.3}) == []
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.WAITING]
    # a study whose only finished trial was pruned has no best yet: training keeps params.yaml's
    pruned = optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params={"dropout": 0.3}, intermediate_values={1: 0.5},
        distributions={"dropout": optuna.distributions.FloatDistribution(0, 1)},
    )  # fmt: skip
    study.add_trial(pruned)
    assert best_params(study) == {"trials": 1, "best_value": None, "params": {}}


def test_a_failed_measurement_or_a_study_with_only_pruned_trials_still_queues_the_first_trials(tmp_path):
    from agerange.tune import OBJECTIVE_VERSION, best_params, queue_first_trials

    dropout = {"dropout": optuna.distributions.FloatDistribution(0, 1)}
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize")
    pruned = optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params={"dropout": 0.2}, distributions=dropout,
        intermediate_values={1: 0.5},
    )  # fmt: skip
    study.add_trial(pruned)  # an old study whose one finished trial was pruned: no best to measure again
    assert queue_first_trials(study, {"dropout": 0.3}) == [{"dropout": 0.3}]
    # the queued measurement fails (a crash, not a dead worker): it is queued again next time
    trial = study.ask(dropout)
    assert trial.params == {"dropout": 0.3} and trial.user_attrs["objective_version"] == OBJECTIVE_VERSION
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert queue_first_trials(study, {"dropout": 0.3}) == [{"dropout": 0.3}]
    # a trial tagged by a newer objective than this code's is never read as today's best
    newer = optuna.trial.create_trial(params={"dropout": 0.9}, distributions=dropout, value=0.99)
    newer.set_user_attr("objective_version", OBJECTIVE_VERSION + 1)
    study.add_trial(newer)
    assert best_params(study)["params"] == {}
