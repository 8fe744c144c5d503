"""Small file helpers: checksums and atomic writes, so a crash never leaves a half-written output."""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


class ChecksumError(ValueError):
    """A file whose content is not the one that was expected."""


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large archives do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, trusted: dict[str, str]) -> str:
    """Check that `path` has one of the trusted checksums; return the matching name.

    Raises:
        ChecksumError: naming the file, its checksum and the trusted ones.
    """
    actual = sha256_file(path)
    for name, expected in trusted.items():
        if actual == expected.lower():
            return name
    known = ", ".join(f"{name} {value[:12]}..." for name, value in trusted.items())
    raise ChecksumError(f"{path}: wrong checksum: sha256 {actual} matches none of the trusted ones ({known})")


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; move it into place only if the block succeeds.

    Works for files and folders alike. A file replaces a file in one rename, so a reader sees
    the old or the new one and never neither; a folder is set aside, replaced and only then
    deleted (put back if the replacing fails). The new content is flushed to disk before the
    rename, so a power cut cannot leave an empty output. If the block raises or writes nothing,
    `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent)) / final.name
    try:
        yield temporary
        if not (temporary.exists() or temporary.is_symlink()):
            raise FileNotFoundError(f"{final}: nothing was written, the old content is kept")
        for path in [*(p for p in temporary.rglob("*") if p.is_file()), temporary]:
            _fsync(path)  # the new content (a file, or every file of a folder) before the rename
        if final.is_dir() and not final.is_symlink():
            # a folder cannot be replaced by rename while it exists: move it aside first
            old = temporary.parent / (final.name + ".old")
            os.replace(final, old)
            try:
                os.replace(temporary, final)
            except OSError:
                os.replace(old, final)
                raise
        else:
            if temporary.is_dir() and (final.exists() or final.is_symlink()):
                final.unlink()  # a folder replacing a file: rename cannot overwrite across kinds
            os.replace(temporary, final)
        _fsync(final.parent)  # the rename itself
    finally:
        shutil.rmtree(temporary.parent, ignore_errors=True)


def _fsync(path: Path) -> None:
    """fsync one file or folder entry (where the OS allows it)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems cannot fsync a folder
    finally:
        os.close(descriptor)


RUN_STATE = "run.json"  # in a checkpoint folder: the MLflow run and what makes it the same run


def resumable_run(checkpoints: Path, identity: dict[str, Any]) -> str | None:
    """The MLflow run id an interrupted run left in `checkpoints` when it was this same run (its
    `identity` equal, compared as JSON); otherwise None, and the folder is emptied: another
    run's checkpoints (other settings, other data) are never resumed."""
    state_file = Path(checkpoints) / RUN_STATE
    previous = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if {key: previous.get(key) for key in identity} == json.loads(json.dumps(identity)):
        return previous.get("run_id")
    shutil.rmtree(checkpoints, ignore_errors=True)
    return None


def save_run_state(checkpoints: Path, run_id: str, identity: dict[str, Any]) -> None:
    """Record in `checkpoints` the run that is writing them, for `resumable_run` after an interruption."""
    Path(checkpoints).mkdir(parents=True, exist_ok=True)
    write_json({"run_id": run_id, **identity}, Path(checkpoints) / RUN_STATE)


def write_json(data: Any, path: Path) -> None:
    """Write pretty JSON atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(table: pd.DataFrame, path: Path) -> None:
    """Write a Parquet table atomically."""
    with atomic_path(path) as temporary:
        table.to_parquet(temporary, index=False)


def write_csv(table: pd.DataFrame, path: Path) -> None:
    """Write a CSV table atomically (DVC plots and people read these)."""
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False)


def write_png(figure, path: Path) -> Path:
    """Save a Matplotlib figure as PNG atomically and release it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    return path
