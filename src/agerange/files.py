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

    Works for files and folders alike: whatever the block writes at the temporary path
    replaces `final` in one rename, and is removed if the block raises.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent)) / final.name
    try:
        yield temporary
        if final.is_dir() and not final.is_symlink():
            # A folder cannot be replaced by rename while it exists: move it aside first.
            old = temporary.parent / (final.name + ".old")
            os.replace(final, old)
        elif final.exists() or final.is_symlink():
            final.unlink()
        os.replace(temporary, final)
    finally:
        shutil.rmtree(temporary.parent, ignore_errors=True)


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
