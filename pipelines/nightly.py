"""The nightly sweep: tune within a time budget, retrain the best, register it if it is better.

    python pipelines/nightly.py [--trials N] [--timeout-minutes M] [--log-dir data/logs]

Warm-starts from the existing study (its finished trials guide the sampler), refuses to start
while another sweep holds the lock, logs to a file, and exits non-zero when any step fails.
The registry's `champion` moves only to a better model (see the register stage).
"""

import argparse
import datetime as dt
import fcntl
import os
import subprocess
import sys
from pathlib import Path

from agerange.config import ConfigError, fail, load_section

LOCKED_EXIT = 75  # EX_TEMPFAIL: another sweep is running; try again later


def nightly_steps(python: str, trials: int, timeout_minutes: float) -> list[list[str]]:
    """The commands of one nightly: add trials to the study, then let DVC rebuild what changed."""
    return [
        [python, "pipelines/tune.py", "--splits", "data/splits.parquet", "--images", "data/images",
         "--out", "data/training.json", "--reports", "data/reports/tune",
         "--checkpoints", "data/checkpoints/tune", "--add-trials", str(trials),
         "--timeout-minutes", str(timeout_minutes)],
        # The tune stage re-reads the study's best; train, evaluate and register follow if it changed.
        [python, "-m", "dvc", "repro", "register"],
    ]  # fmt: skip


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
    steps = nightly_steps(sys.executable, args.trials, args.timeout_minutes)
    status = run_steps(steps, log_file, python=sys.executable)
    if status == 0:
        print(f"nightly: done; log in {log_file}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
