"""The team set-up end to end (issue 16), as the README's "Working as a team" section runs it:
PostgreSQL (password login on 127.0.0.1) holds the Optuna study and MLflow's store, `mlflow server`
with its basic-auth app serves runs, the registry and artifacts, and two working copies that share
no folder sweep together; the first copy's nightly registers the study's best as champion
through the server and records what built it (a commit and the DVC remote); a clone of that
record pulls everything and rebuilds nothing, and a colleague predicts from the champion."""

import glob
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from agerange.serving import CANDIDATES_FASTEST_FIRST, choose_variant
from bench.serving_load import free_port
from tests.conftest import FAIRFACE
from tests.e2e.conftest import TINY_SPACE, set_params
from tests.e2e.test_data_pipeline import NEW_PHOTOS, _run
from tests.e2e.test_mlflow_ui import CHROMIUM

pytestmark = pytest.mark.slow
ROLE = "agerange"


def _as_postgres(*command, stdin: str | None = None) -> None:
    # PostgreSQL refuses to run as root; CI and these machines run tests as root.
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *map(str, command)], check=True, capture_output=True, text=True, input=stdin)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A throwaway PostgreSQL server on 127.0.0.1 that takes passwords (scram), with a role
    `agerange` whose password clients read from a .pgpass file, never from a URL."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL is needed for this test: apt-get install postgresql (CI's .ci/run does)"
    bin_dir = Path(found[-1]).parent
    # short and outside pytest's tree: PostgreSQL's socket path has a length limit
    folder = Path(tempfile.mkdtemp(prefix="agerange-pg-", dir="/tmp"))
    data, socket_dir, port = folder / "data", folder / "socket", free_port()
    socket_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(socket_dir, "postgres")
    _as_postgres(
        bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256"
    )
    _as_postgres(
        bin_dir / "pg_ctl", "-D", data, "-w", "-l", folder / "server.log",
        "-o", f"-k {socket_dir} -p {port} -c listen_addresses=127.0.0.1 -c max_connections=100", "start",
    )  # fmt: skip
    password = secrets.token_urlsafe(18)
    try:
        statements = f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}';\n" + "".join(
            f"CREATE DATABASE {name} OWNER {ROLE};\n" for name in ("mlflow", "mlflow_auth", "optuna")
        )  # on standard input, so the password is never on a command line
        _as_postgres(bin_dir / "psql", "-h", socket_dir, "-p", port, "-U", "postgres", "-q", "-v",
                     "ON_ERROR_STOP=1", "-f", "-", stdin=statements)  # fmt: skip
        pgpass = tmp_path_factory.mktemp("secrets") / "pgpass"
        pgpass.write_text(f"127.0.0.1:{port}:*:{ROLE}:{password}\n")
        pgpass.chmod(0o600)
        yield {"port": port, "password": password, "pgpass": pgpass, "log": folder / "server.log"}
    finally:
        _as_postgres(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """`mlflow server` as the README starts it: basic auth, PostgreSQL backend, proxied artifacts."""
    root = tmp_path_factory.mktemp("mlflow-server")
    database = f"postgresql://{ROLE}@127.0.0.1:{postgres['port']}"
    (root / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {database}/mlflow_auth\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    admin_password = secrets.token_urlsafe(18)
    environment = {
        **os.environ,
        "PGPASSFILE": str(postgres["pgpass"]),
        "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
        "--backend-store-uri", f"{database}/mlflow", "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = root / "server.log"
    with open(log, "w") as output:
        server = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"mlflow server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"mlflow server not ready:\n{log.read_text()[-3000:]}"
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield {"url": url, "admin_password": admin_password, "artifacts": root / "artifacts", "log": log}
    finally:
        server.terminate()
        server.wait(timeout=30)


def _team_environment(postgres, mlflow_server) -> dict[str, str]:
    """What a team member's shell holds: the server and the secrets' places, no secret in a URL."""
    return {
        **os.environ,
        "PGPASSFILE": str(postgres["pgpass"]),
        "MLFLOW_TRACKING_URI": mlflow_server["url"],
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": mlflow_server["admin_password"],
    }


def test_two_clones_sweep_one_study_the_nightly_registers_and_records_it_and_a_colleague_predicts(
    sweep_repo, postgres, mlflow_server, tmp_path_factory, monkeypatch
):
    # a colleague's working copy, sharing no folder with the first (its own data, cache and runs)
    colleague = tmp_path_factory.mktemp("colleague") / "agerange"
    shutil.copytree(sweep_repo, colleague, symlinks=True)
    study_url = f"postgresql://{ROLE}@127.0.0.1:{postgres['port']}/optuna"
    for repo in (sweep_repo, colleague):  # committed settings: the shared study's address, no password
        set_params(repo, tune={"n_trials": 4, "heartbeat_seconds": 2, "storage": study_url})
    team = _team_environment(postgres, mlflow_server)
    for name in ("PGPASSFILE", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, team[name])  # this process reads the study and the server too
    command = [
        sys.executable, "pipelines/tune.py", "--splits", "data/splits.parquet", "--images", "data/images",
        "--out", "data/reports/worker.json", "--reports", "data/reports/tune-worker",
        "--checkpoints", "data/checkpoints/worker",
    ]  # fmt: skip
    first, second = (
        subprocess.Popen(
            command, cwd=repo, env=team, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for repo in (sweep_repo, colleague)
    )
    # The first worker is killed (SIGKILL) in the middle of a trial, after one of its trials finished.
    killed, finished_before = _kill_mid_trial(first, study_url)
    output = second.communicate(timeout=900)[0]
    assert second.returncode == 0, output[-3000:]
    outputs = [first.stdout.read(), output]

    # each trial once in the study; the killed one failed and its params were queued again (run by
    # the other worker when it still needed trials, else left waiting for the next sweep: the
    # worker fails it before it ends either way), and no finished trial was lost or run again
    study = optuna.load_study(study_name="agerange", storage=study_url)
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    finished = [
        t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert len(finished) == 4
    assert [t.number for t in trials if t.state == optuna.trial.TrialState.FAIL] == [killed]
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    assert [retry(t) for t in trials if retry(t) is not None] == [killed]
    for number, params in finished_before.items():
        assert study.trials[number].params == params and study.trials[number] in finished

    # ... then the first copy's nightly (no trials of its own) trains the study's best, registers it
    # through the server, records what built it and leaves the working copy as it found it
    nightly = _nightly_records_what_it_registers(sweep_repo, team)
    record = _clone_of_the_record(sweep_repo, team)  # what a colleague's `git pull` + `dvc pull` get
    log = nightly["log"]
    _training_and_evaluation_are_tracked(record, mlflow_server["url"], log)
    assert "tune: study 'agerange' has 4 finished trials" in log
    best = json.loads((record / "data/reports/tune/best.json").read_text())
    assert best["trials"] == 4 and set(best["params"]) == set(TINY_SPACE)
    # the resolved configuration that rebalance and train read is params.yaml's with the best applied
    resolved = json.loads((record / "data/training.json").read_text())
    assert resolved["tuned"] == best["params"] and "using the tuned params" in log
    assert resolved["train"]["dropout"] == best["params"]["dropout"]
    assert resolved["rebalance"]["strategy"] == best["params"]["rebalance_strategy"]
    # the study, copied from PostgreSQL into the file DVC versions with that configuration
    kept = optuna.load_study(study_name="agerange", storage="sqlite:///" + str(record / "data/optuna.db"))
    assert kept.best_params == study.best_params
    # ended trials (complete or pruned) leave no checkpoints or weight-soup snapshots behind
    left = [
        path.name for repo in (sweep_repo, colleague) for path in repo.glob("data/checkpoints/worker/trial_*")
    ]
    assert left in ([], [f"trial_{killed}"])  # only the killed worker's, which it could not remove
    registration = json.loads((record / "data/reports/registration.json").read_text())
    assert registration["alias"] == "champion" and registration["version"] == 1
    card = (record / "data/reports/model_card.md").read_text()
    assert "## Intended use" in card and "## Known failure conditions" in card and "new photos" in card
    # the packaged model, measured through the whole predict path on every val and test chip
    predict_path = json.loads((record / "data/reports/predict_path.json").read_text())
    splits = json.loads((record / "data/reports/split.json").read_text())
    assert predict_path["test"]["n"] == splits["test"]["images"]
    assert predict_path["test"]["faces_found"] > 0.95 and 0 <= predict_path["test"]["accuracy"] <= 1
    # and on the labelled real photos (the shared FairFace set), at their age ranges
    new_photos = predict_path["new_photos"]
    assert new_photos["labelled_photos"] == NEW_PHOTOS and new_photos["photos_with_face"] > 0.9 * NEW_PHOTOS
    assert 0 < new_photos["range_accuracy"] <= new_photos["range_within_one"] <= 1
    # the distil stage's student and the trained model, each in float and int8, with and without
    # the mirror, measured on validation; the served one is the rule's choice, and the card says which
    variant = predict_path["variant"]
    assert set(variant["val"]) == set(CANDIDATES_FASTEST_FIRST)
    assert variant["chosen"] == choose_variant(variant["val"], 0.005)
    assert all(figures["n"] == splits["val"]["images"] for figures in variant["val"].values())
    assert f"Served: **{variant['chosen']}**" in card

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server["url"], registry_uri=mlflow_server["url"])
    experiment = client.get_experiment_by_name("agerange")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied through the server
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    sweeps = {run.info.run_id for run in runs if run.info.run_name.startswith("sweep-")}
    trial_runs = [run for run in runs if "optuna.trial" in run.data.tags]
    # ... and each trial that ran, once in MLflow (the killed one too), nested under the sweep run of
    # its worker; both ran (a retry still queued has not run)
    ran = [t.number for t in trials if t.state != optuna.trial.TrialState.WAITING]
    assert sorted(int(run.data.tags["optuna.trial"]) for run in trial_runs) == sorted(ran)
    assert len(sweeps) == 2 and {run.data.tags["mlflow.parentRunId"] for run in trial_runs} == sweeps
    # the killed worker's runs were ended by the other worker: its trial FAILED, its sweep KILLED
    killed_run = next(run for run in trial_runs if run.data.tags["optuna.trial"] == str(killed))
    assert (killed_run.info.status, killed_run.data.tags["optuna.state"]) == ("FAILED", "failed")
    assert client.get_run(killed_run.data.tags["mlflow.parentRunId"]).info.status == "KILLED"
    assert all(run.info.status == "FINISHED" for run in trial_runs if run is not killed_run)
    version = client.get_model_version_by_alias("agerange", "champion")
    assert version.description == card  # the model card, shown by the registry page
    sweep_runs = [run for run in runs if run.info.run_id in sweeps]
    # the surviving worker's sweep run ends with the study's best (the killed one never ended)
    assert ["best.unfreeze_layers" in run.data.params for run in sweep_runs].count(True) == 1
    assert list(mlflow_server["artifacts"].rglob("serving_model")), "artifacts did not go through the server"
    # the student's own run names its teacher, the training run that carries the served model
    distil = [run for run in runs if run.data.tags.get("stage") == "distil"]
    train_run = json.loads((record / "data/model/run.json").read_text())["run_id"]
    assert len(distil) == 1 and distil[0].data.tags["teacher_run"] == train_run
    assert client.get_run(train_run).data.tags["served_variant"] == variant["chosen"]

    # the colleague predicts from the registered champion, through the server
    photo = str(FAIRFACE / "fairface_0002.jpg")
    predict = [sys.executable, "-m", "agerange.cli", "predict", photo, "--format", "json"]
    predicted = _run(predict, cwd=colleague, env=team)
    assert len(json.loads(predicted.stdout)[0]["faces"]) == 1

    # the server wants a login, and its UI shows the runs to one who has it
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{mlflow_server['url']}/api/2.0/mlflow/experiments/search?max_results=5")
    assert refused.value.code == 401
    page = _browse_runs(mlflow_server, experiment.experiment_id)
    assert "sweep-agerange" in page and "train-mobilenet_v2" in page

    # no secret anywhere: runs' params and tags, the registered version, the study, files, logs
    secrets_ = (postgres["password"], mlflow_server["admin_password"])
    texts = [json.dumps([run.data.params, run.data.tags]) for run in runs]
    texts += [json.dumps(version.tags), json.dumps(study.user_attrs)]
    texts += [json.dumps([t.user_attrs, t.system_attrs, t.params]) for t in trials]
    texts += [
        mlflow_server["log"].read_text(),
        postgres["log"].read_text(),
        *outputs,
        nightly["stdout"],
        log,
    ]
    assert not [text[:200] for text in texts if any(secret in text for secret in secrets_)]
    folders = [sweep_repo, colleague, record, mlflow_server["artifacts"], nightly["remote"]]
    leaked = [
        str(path) for folder in folders for path in folder.rglob("*")
        if path.is_file() and any(s.encode() in path.read_bytes() for s in secrets_)
    ]  # fmt: skip
    assert not leaked


def _training_and_evaluation_are_tracked(record: Path, server: str, log: str) -> None:
    """What the nightly's train and evaluate stages left: the evaluation reports (sliced by image
    condition too), and the training run on the server with its params, provenance tags, one
    validation point per epoch of both ensemble members, figures, datasets and a logged model
    that loads without the training code and answers in ages."""
    import mlflow
    import numpy as np
    import pandas as pd

    from agerange import registry, tracking
    from agerange.labels import AGE_BINS

    assert "evaluate: test split" in log and "evaluate: accuracy falls most for " in log
    evaluation = json.loads((record / "data/reports/evaluation.json").read_text())
    for side in ("val", "test"):
        assert {"accuracy", "within_one", "mae_years", "macro_f1", "ece"} <= set(evaluation[side])
    reports = record / "data/reports/evaluation"
    for name in ("confusion_matrix.png", "worst_mistakes.png", "calibration.png", "off_by_n.csv",
                 "accuracy_by_ethnicity.csv", "accuracy_by_gender.csv", "confusion.csv"):  # fmt: skip
        assert (reports / name).stat().st_size > 0
    for name in ("accuracy_by_condition.csv", "accuracy_by_condition_val.csv"):
        by_condition = pd.read_csv(reports / name)
        assert {"blur", "face_size", "head_roll", "detector_score"} <= set(by_condition["condition"])

    reference = json.loads((record / "data/model/run.json").read_text())
    tracking.use_tracking_uri(server)
    client = mlflow.MlflowClient(tracking_uri=server)
    run = client.get_run(reference["run_id"])
    assert run.data.params["train.backbone"] == "mobilenet_v2" and run.data.params["train.image_size"] == "48"
    assert run.data.tags["git_commit"] != "unknown"
    assert any(key.startswith("data.data/") for key in run.data.tags)
    assert {"best_val_accuracy", "test_accuracy", "test_within_one", "eval_val_accuracy", "test_ece"} <= set(
        run.data.metrics
    )
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(1, 5))  # both phases of both members, one point per epoch
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in artifacts and "evaluation/worst_mistakes.png" in artifacts
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"train", "val"}

    model = registry.load_keras_model(reference["model_uri"])
    info = registry.load_model_info(reference["model_uri"])
    assert info["image_size"] == 48 and len(info["class_names"]) == 10 and info["ensemble_members"] == 2
    # params.yaml's head: a distribution over the years 0-100, the age groups being sums of it
    assert info["head"] == "ages"
    probabilities = np.asarray(model(np.zeros((2, 48, 48, 3), dtype="float32")))
    assert probabilities.shape == (2, AGE_BINS) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)


def _nightly_records_what_it_registers(repo: Path, team: dict[str, str]) -> dict[str, object]:
    """`pipelines/nightly.py` (no trials of its own) in `repo`, with an uncommitted change a user
    might leave: the version it registers names a clean commit on a branch of its own holding the
    dvc.lock and params that built it, the lock's outputs are on the DVC remote, and the working
    copy is as the nightly found it. Returns its output, its log and the remote's folder."""
    import mlflow
    import yaml

    # the default's two-model ensemble, which the distil stage's student then learns from, one
    # epoch a phase
    set_params(
        repo,
        train={"seed": 43, "ensemble_members": 2, "head_epochs": 1, "finetune_epochs": 1},
        drift={"reference_size": 120, "control_size": 40},
    )
    status_before = _run(["git", "status", "--porcelain"], cwd=repo).stdout
    lock_before = (repo / "dvc.lock").read_bytes()
    nightly = [sys.executable, "pipelines/nightly.py", "--trials", "0", "--timeout-minutes", "5"]
    result = _run(nightly, cwd=repo, env=team)
    assert "recorded as" in result.stdout and "nightly: done" in result.stdout
    log = next((repo / "data/logs").glob("nightly-*.log")).read_text()
    assert "Running stage 'train'" in log and "Running stage 'drift'" in log and "dvc push" in log

    server = team["MLFLOW_TRACKING_URI"]
    client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
    newest = max(client.search_model_versions("name='agerange'"), key=lambda v: int(v.version))
    commit, branch = newest.tags["git_commit"], newest.tags["record_branch"]
    assert _run(["git", "rev-parse", branch], cwd=repo).stdout.strip() == commit
    assert newest.tags["trained_from_commit"].endswith("-dirty")  # what the record replaces
    # the commit holds the params it was trained with and the lock whose register stage made it
    params = yaml.safe_load(_run(["git", "show", f"{commit}:params.yaml"], cwd=repo).stdout)
    assert params["train"]["seed"] == 43 and "@127.0.0.1" in params["tune"]["storage"]
    lock = yaml.safe_load(_run(["git", "show", f"{commit}:dvc.lock"], cwd=repo).stdout)
    model = next(out for out in lock["stages"]["train"]["outs"] if out["path"] == "data/model")
    remote = repo.parent / "agerange-dvc-storage"  # .dvc/config's relative default remote
    for cache in (repo / ".dvc/cache", remote):  # local, pushed
        files = json.loads((cache / "files/md5" / model["md5"][:2] / model["md5"][2:]).read_text())
        run_json = next(entry["md5"] for entry in files if entry["relpath"] == "run.json")
        reference = json.loads((cache / "files/md5" / run_json[:2] / run_json[2:]).read_text())
        assert reference["run_id"] == newest.run_id  # the lock's model is the registered version's

    # as found: the same git status, dvc.lock byte for byte, and the outputs it names
    assert _run(["git", "status", "--porcelain"], cwd=repo).stdout == status_before
    assert (repo / "dvc.lock").read_bytes() == lock_before
    return {"stdout": result.stdout, "log": log, "remote": remote}


def _clone_of_the_record(repo: Path, team: dict[str, str]) -> Path:
    """Issue 16, item 4: another working copy (`git clone` of the nightly's record branch, as a
    colleague's `git pull` would get it), `dvc pull` from the default remote, `dvc repro`: only the
    tune stage runs (it always does: it reads the shared study) and rebuilds nothing after it;
    `agerange predict` answers with the pulled model. Returns the clone."""
    import yaml

    branch = _run(["git", "branch", "--list", "nightly/*", "--format=%(refname:short)"], cwd=repo)
    # beside the original, so .dvc/config's relative remote (../../agerange-dvc-storage) is the same folder
    clone = repo.parent / "agerange-clone"
    record_branch = branch.stdout.split()[-1]
    _run(["git", "clone", "-q", "--branch", record_branch, str(repo), str(clone)], cwd=clone.parent)
    assert not (clone / "data").exists()
    _run([sys.executable, "-m", "dvc", "pull"], cwd=clone, env=team)
    result = _run([sys.executable, "-m", "dvc", "repro", "drift"], cwd=clone, env=team)
    assert re.findall(r"Running stage '([^']+)'", result.stdout) == ["tune"], result.stdout
    recorded = yaml.safe_load(_run(["git", "show", "HEAD:dvc.lock"], cwd=clone).stdout)
    assert yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["train"] == recorded["stages"]["train"]
    assert _run(["git", "status", "--porcelain"], cwd=clone).stdout == ""  # tune wrote what was recorded

    photo = str(FAIRFACE / "fairface_0002.jpg")
    predict = [sys.executable, "-m", "agerange.cli", "predict", photo, "--model", "data/serving"]
    answer = _run(predict, cwd=clone)
    assert "fairface_0002.jpg" in answer.stdout and "error" not in answer.stdout.lower()
    return clone


def _kill_mid_trial(worker: subprocess.Popen, study_url: str) -> tuple[int, dict[int, dict]]:
    """SIGKILL `worker` while a trial of its own is running (some seconds in) and one has finished;
    returns the killed trial's number and the finished trials' params."""
    storage = optuna.storages.RDBStorage(study_url)  # one connection pool for all the polling
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(1)
        assert worker.poll() is None, worker.stdout.read()[-3000:]
        try:
            trials = optuna.load_study(study_name="agerange", storage=storage).get_trials(deepcopy=False)
        except KeyError:  # the study is not created yet
            continue
        mine = [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{worker.pid}")]
        running = [t for t in mine if t.state == optuna.trial.TrialState.RUNNING
                   and time.time() - t.datetime_start.timestamp() > 3]  # fmt: skip
        if running and any(t.state == optuna.trial.TrialState.COMPLETE for t in mine):
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            storage.engine.dispose()
            return running[0].number, {t.number: t.params for t in trials if t.state in done}
    raise AssertionError("the first worker never had a finished trial and a running one")


def _browse_runs(mlflow_server, experiment_id: str) -> str:
    """The runs table of the experiment as headless Chromium shows it to a logged-in user."""
    assert CHROMIUM, "Chromium is needed for this test: apt-get install chromium (CI's .ci/run does)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(
                http_credentials={"username": "admin", "password": mlflow_server["admin_password"]}
            )
            page = context.new_page()
            page.goto(f"{mlflow_server['url']}/#/experiments/{experiment_id}/runs", timeout=60_000)
            page.wait_for_selector("text=train-mobilenet_v2", timeout=60_000)
            return page.content()
        finally:
            browser.close()
