"""The nightly sweep: tune within a time budget, retrain the best, register it, check drift.

    python pipelines/nightly.py [--trials N] [--timeout-minutes M] [--log-dir data/logs]

Warm-starts from the existing study (its finished trials guide the sampler), refuses to start
while another sweep holds the lock, logs to a file, and exits non-zero when any step fails.
The registry's `champion` moves only to a better model (see the register stage); the drift
stage then checks the new photos against the champion.

When it registers a version, the dvc.lock and params that built it are committed on a branch of
their own, `nightly/<date>-v<version>` (not a DVC experiment: a plain branch any git host
shows), its outputs are pushed to the DVC remote, and the version's `git_commit` tag names that
commit (`trained_from_commit` keeps the working copy's own). Then dvc.lock and params.yaml are
put back as they were found and `dvc checkout` restores the outputs they name: the working copy
ends as it started, the new model lives in the registry and on its branch.
"""

import argparse
import datetime as dt
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from agerange.config import ConfigError, fail, load_section
from agerange.record import Found, RecordError, commit_working_tree, restore_files, saved_files

LOCKED_EXIT = 75  # EX_TEMPFAIL: another sweep is running; try again later
REGISTRATION = Path("data/reports/registration.json")  # dvc.yaml's paths.registration
RUN_REFERENCE = Path("data/model/run.json")  # the trained model's MLflow run and store
PUT_BACK = ("dvc.lock", "params.yaml")  # what the nightly changes in git's view of the working copy


def nightly_steps(python: str, trials: int, timeout_minutes: float) -> list[list[str]]:
    """The commands of one nightly: add trials to the study, then let DVC rebuild what changed."""
    return [
        [python, "pipelines/tune.py", "--splits", "data/splits.parquet", "--images", "data/images",
         "--out", "data/training.json", "--reports", "data/reports/tune",
         "--checkpoints", "data/checkpoints/tune", "--drop", "data/label_drop.csv",
         "--add-trials", str(trials),
         "--timeout-minutes", str(timeout_minutes)],
        # The whole pipeline: the tune stage re-reads the study's best; train, evaluate, register,
        # drift and the headline figures follow if it changed (drift also when only the champion
        # did), so the record's dvc.lock names every output and a clone's `dvc pull` gets them all.
        [python, "-m", "dvc", "repro"],
    ]  # fmt: skip


def registered_version(registration: Path = REGISTRATION) -> int | None:
    """The version the register stage last registered (None before any)."""
    return json.loads(registration.read_text())["version"] if registration.is_file() else None


def record_version(version: int, log_file: Path, python: str) -> int:
    """Commit the dvc.lock and params that built `version` on a branch, push its outputs to the
    DVC remote and tag the version with that commit; 0, or the failing step's status."""
    from agerange import registry, tracking

    branch = f"nightly/{dt.datetime.now():%Y-%m-%d-%H%M%S}-v{version}"
    try:
        commit = commit_working_tree(
            Path("."), branch, f"nightly: model version {version}, the dvc.lock and params that built it"
        )
    except RecordError as error:
        print(f"nightly: no record of version {version}: {error}", file=sys.stderr)
        return 1
    status = run_steps([[python, "-m", "dvc", "push"]], log_file, python)
    tracking.use_tracking_uri(tracking.read_run_reference(RUN_REFERENCE)["tracking_uri"])
    trained_from = registry.version_tags(version).get("git_commit", "unknown")
    registry.tag_version(
        version, {"git_commit": commit, "record_branch": branch, "trained_from_commit": trained_from}
    )
    print(f"nightly: version {version} recorded as {commit[:12]} on branch {branch}")
    return status


def put_back(saved: dict[str, Found], log_file: Path, python: str) -> int:
    """dvc.lock and params.yaml as the nightly found them (files and git index), and the outputs
    that lock names."""
    restore_files(Path("."), saved)
    # only the stages that lock names: outputs of stages it lacks stay as the nightly left them
    stages = list((yaml.safe_load(saved["dvc.lock"].content or b"") or {}).get("stages", {}))
    if not stages:
        return 0
    return run_steps([[python, "-m", "dvc", "checkout", *stages]], log_file, python)


def finish(status: int, before: int | None, found: dict[str, Found], log_file: Path, python: str) -> int:
    """Record a newly registered version, even when a later step (drift, headline) failed, since
    the registry already holds it; then always put the working copy back. The worst status."""
    try:
        if (version := registered_version()) != before and version is not None:
            status = record_version(version, log_file, python) or status
    finally:
        status = put_back(found, log_file, python) or status
    return status


def run_steps(steps: list[list[str]], log_file: Path, python: str) -> int:
    """Run the steps in order, output appended to `log_file`; the first failing step's status, or 0."""
    # dvc.yaml's stages call `python`: make that this interpreter (cron gives no virtualenv on PATH)
    path = f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    environment = {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_file, "a") as log:
        for step in steps:
            log.write(f"\n$ {' '.join(step)}\n")
            log.flush()
            status = subprocess.run(step, stdout=log, stderr=subprocess.STDOUT, env=environment).returncode
            if status != 0:
                print(
                    f"nightly: step failed with status {status}: {' '.join(step[:3])}; see {log_file}",
                    file=sys.stderr,
                )
                return status
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    try:
        settings = load_section("tune")
    except ConfigError as error:
        fail(str(error))
    parser.add_argument("--trials", type=int, default=settings.nightly_trials)
    parser.add_argument("--timeout-minutes", type=float, default=settings.timeout_minutes)
    parser.add_argument("--log-dir", type=Path, default=Path("data/logs"))
    parser.add_argument("--lock", type=Path, default=Path("data/nightly.lock"))
    args = parser.parse_args()

    args.lock.parent.mkdir(parents=True, exist_ok=True)
    lock = open(args.lock, "w")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"nightly: another sweep holds {args.lock}; not starting", file=sys.stderr)
        return LOCKED_EXIT

    args.log_dir.mkdir(parents=True, exist_ok=True)
    log_file = args.log_dir / f"nightly-{dt.datetime.now():%Y%m%d-%H%M%S}.log"
    found, before = saved_files(Path("."), PUT_BACK), registered_version()
    steps = nightly_steps(sys.executable, args.trials, args.timeout_minutes)
    status = finish(
        run_steps(steps, log_file, python=sys.executable), before, found, log_file, sys.executable
    )
    if status == 0:
        print(f"nightly: done; log in {log_file}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
