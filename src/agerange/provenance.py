"""Where a result came from: the code (git commit), the data (DVC hashes), the packages (versions).

Plain reads of git, dvc.lock and the installed packages, with no MLflow: the tracking and
serving modules record these, and stage scripts pass them on as tags.
"""

import subprocess
from importlib.metadata import version
from pathlib import Path

import yaml


def git_commit(root: Path = Path(".")) -> str:
    """The current git commit (with '-dirty' when the tree has changes), or 'unknown'."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_version(lock_file: Path = Path("dvc.lock"), outputs: tuple[str, ...] = ()) -> dict[str, str]:
    """DVC hashes (md5) of data outputs, read from dvc.lock: the exact data a run used."""
    if not Path(lock_file).is_file():
        return {}
    lock = yaml.safe_load(Path(lock_file).read_text()) or {}
    versions = {}
    for stage in lock.get("stages", {}).values():
        for out in stage.get("outs", []):
            if not outputs or out["path"] in outputs:
                versions[out["path"]] = out.get("md5", "")
    return versions


def pinned(*packages: str) -> list[str]:
    """Requirement lines pinning packages to the versions installed here (a logged model's pip needs)."""
    return [f"{package}=={version(package)}" for package in packages]
