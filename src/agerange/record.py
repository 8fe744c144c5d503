"""A registered model's record: the exact dvc.lock and params that built it, as a git commit.

The nightly sweep retrains and registers while the working tree holds uncommitted changes
(dvc.lock always, params.yaml sometimes), so the commit a version was trained from does not
rebuild it. `commit_working_tree` commits the tracked files and dvc.lock as they are, on a branch
of their own, through a scratch index: the working tree, the index and the checked-out branch
stay untouched. `saved_files` / `restore_files` put files (and their index entries) back the way
the nightly found them.
"""

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agerange.files import atomic_path

# who the record commits are by when git has no identity configured (cron, a service account)
NIGHTLY_AUTHOR = ("agerange nightly", "nightly@localhost")


class RecordError(RuntimeError):
    """A git step of the record failed; the message names it and git's reason."""


def git(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run git in `root`; its output, stripped. A failure raises RecordError with git's message."""
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        reason = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise RecordError(f"git {args[0]}: {reason[-1] if reason else f'status {result.returncode}'}")
    return result.stdout.strip()


def _identity(root: Path) -> dict[str, str]:
    """Author and committer for commit-tree: git's own configuration, else NIGHTLY_AUTHOR."""
    name = subprocess.run(["git", "config", "user.name"], cwd=root, capture_output=True, text=True).stdout
    email = subprocess.run(["git", "config", "user.email"], cwd=root, capture_output=True, text=True).stdout
    name, email = name.strip() or NIGHTLY_AUTHOR[0], email.strip() or NIGHTLY_AUTHOR[1]
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def commit_working_tree(root: Path, branch: str, message: str, also: tuple[str, ...] = ("dvc.lock",)) -> str:
    """Commit every tracked or staged file as it is in the working tree, and the files in `also` (dvc.lock
    may be untracked yet), on top of HEAD as the new branch `branch`; returns the commit's sha.

    Nothing else changes: a scratch index is used, and HEAD, the index and the files stay as they are.
    """
    root = Path(root)
    if git(root, "branch", "--list", branch):
        raise RecordError(f"branch {branch}: already exists; not overwriting another record")
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(scratch) / "index")}
        # files the user added to the index but has not committed yet belong in the record too
        staged_new = git(root, "diff", "--cached", "--name-only", "--diff-filter=A", "-z").split("\0")
        git(root, "read-tree", "HEAD", env=env)
        git(root, "add", "--update", env=env)  # tracked files, modified or deleted
        present = [name for name in (*also, *staged_new) if name and (root / name).is_file()]
        if present:
            git(root, "add", "--", *present, env=env)
        tree = git(root, "write-tree", env=env)
        commit = git(root, "commit-tree", tree, "-p", "HEAD", "-m", message, env={**env, **_identity(root)})
    git(root, "update-ref", f"refs/heads/{branch}", commit, "")  # "" : create only, never move
    return commit


@dataclass(frozen=True)
class Found:
    """A file as found: its bytes (None: absent) and git's index entry for it (None: not in the
    index), since `dvc repro` stages dvc.lock in git's index itself (core.autostage)."""

    content: bytes | None
    index_entry: str | None  # "mode sha stage\tpath", as `git ls-files --stage` prints it


def in_git_repository(root: Path) -> bool:
    return subprocess.run(["git", "rev-parse", "--git-dir"], cwd=root, capture_output=True).returncode == 0


def saved_files(root: Path, names: tuple[str, ...]) -> dict[str, Found]:
    """Each file's bytes and index entry (None outside a git repository), to put back with
    `restore_files`."""
    root = Path(root)
    tracked = in_git_repository(root)
    return {
        name: Found(
            (root / name).read_bytes() if (root / name).is_file() else None,
            (git(root, "ls-files", "--stage", "--", name) or None) if tracked else None,
        )
        for name in names
    }


def restore_files(root: Path, saved: dict[str, Found]) -> None:
    """Put files and their index entries back as `saved_files` found them."""
    root = Path(root)
    tracked = in_git_repository(root)
    for name, found in saved.items():
        path = root / name
        if found.content is None:
            path.unlink(missing_ok=True)
        elif not path.is_file() or path.read_bytes() != found.content:
            with atomic_path(path) as temporary:
                temporary.write_bytes(found.content)
        if not tracked:
            continue
        if found.index_entry is None:
            git(root, "rm", "--cached", "--quiet", "--ignore-unmatch", "--", name)
        else:
            mode, sha = found.index_entry.split()[:2]
            git(root, "update-index", "--add", "--cacheinfo", f"{mode},{sha},{name}")
