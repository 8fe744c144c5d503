"""The nightly's record: a commit of the working tree on its own branch, touching nothing else."""

import subprocess
from pathlib import Path

import pytest

from agerange.record import RecordError, commit_working_tree, restore_files, saved_files


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    (tmp_path / "code.py").write_text("print('hi')\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    return tmp_path


def test_the_record_commits_the_working_tree_on_a_branch_and_changes_nothing_else(repo: Path):
    (repo / "params.yaml").write_text("seed: 2\n")  # a user's uncommitted change
    (repo / "dvc.lock").write_text("stages: {}\n")  # written by dvc repro, not tracked yet
    (repo / "notes.txt").write_text("scratch\n")  # untracked and not asked for: stays out
    (repo / "code.py").write_text("import helper\nprint('bye')\n")
    (repo / "helper.py").write_text("X = 1\n")  # a new file the change needs, staged, not committed
    _git(repo, "add", "code.py", "helper.py")  # staged changes stay staged, as they were
    head, status = _git(repo, "rev-parse", "HEAD"), _git(repo, "status", "--porcelain")

    commit = commit_working_tree(repo, "nightly/one", "record")

    assert _git(repo, "rev-parse", "nightly/one") == commit
    assert _git(repo, "show", f"{commit}:params.yaml") == "seed: 2"
    assert _git(repo, "show", f"{commit}:dvc.lock") == "stages: {}"
    assert _git(repo, "show", f"{commit}:code.py") == "import helper\nprint('bye')"
    assert _git(repo, "ls-tree", "--name-only", commit).split() == [
        "code.py",
        "dvc.lock",
        "helper.py",
        "params.yaml",
    ]
    assert _git(repo, "rev-parse", f"{commit}^") == head  # on top of HEAD
    # HEAD, the branch, the index and the files are as they were
    assert _git(repo, "rev-parse", "HEAD") == head and _git(repo, "branch", "--show-current") == "main"
    assert _git(repo, "status", "--porcelain") == status
    with pytest.raises(RecordError, match="nightly/one: already exists"):
        commit_working_tree(repo, "nightly/one", "again")


def test_saved_files_come_back_byte_for_byte_or_absent_and_so_do_their_index_entries(repo: Path):
    (repo / "code.py").write_text("print('staged')\n")
    _git(repo, "add", "code.py")
    status = _git(repo, "status", "--porcelain")
    saved = saved_files(repo, ("params.yaml", "dvc.lock", "code.py"))
    (repo / "params.yaml").write_text("seed: 9\n")
    (repo / "dvc.lock").write_text("new\n")
    (repo / "code.py").write_text("print('changed again')\n")
    _git(repo, "add", "dvc.lock", "code.py", "params.yaml")  # as dvc's autostage does
    restore_files(repo, saved)
    assert (repo / "params.yaml").read_text() == "seed: 1\n" and not (repo / "dvc.lock").exists()
    assert (repo / "code.py").read_text() == "print('staged')\n"
    assert _git(repo, "status", "--porcelain") == status


def test_outside_a_git_repository_files_still_come_back(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    saved = saved_files(tmp_path, ("params.yaml", "dvc.lock"))
    (tmp_path / "params.yaml").write_text("seed: 2\n")
    restore_files(tmp_path, saved)
    assert (tmp_path / "params.yaml").read_text() == "seed: 1\n"


def test_a_file_hidden_from_git_status_is_still_recorded_as_it_is(repo: Path):
    """A local settings tweak kept out of `git status` (skip-worktree) built the model: the
    record holds the file as it is, not as committed."""
    (repo / "params.yaml").write_text("seed: 2\n")
    _git(repo, "update-index", "--skip-worktree", "params.yaml")
    commit = commit_working_tree(repo, "nightly/hidden", "record")
    assert _git(repo, "show", f"{commit}:params.yaml") == "seed: 2"
