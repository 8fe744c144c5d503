"""Ingest: unpack the raw archive safely and describe every image in a metadata table.

Each file ends up in exactly one of two tables: `metadata` (usable images, one row each)
or `quarantine` (one row per rejected file, with one reason). Nothing is dropped silently.
"""

import hashlib
import io
import logging
import os
import tarfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from agerange.labels import LabelError, age_to_group, parse_label
from agerange.preprocess import decode_failure

log = logging.getLogger(__name__)

# Quality statistics are computed on a grey thumbnail of this size, so that photos of any
# resolution are comparable (training chips, new photos and drift all use the same scale).
QUALITY_SIZE = 100

# Quarantine reasons, one per rejected file.
UNSAFE_MEMBER = "unsafe_archive_member"
UNPARSABLE_NAME = "unparsable_name"
UNDECODABLE_IMAGE = "undecodable_image"
AGE_OUT_OF_RANGE = "age_out_of_range"
CONFLICTING_DUPLICATE = "conflicting_duplicate"
DUPLICATE = "duplicate_kept_once"

QUARANTINE_COLUMNS = ["path", "reason", "detail"]


class ArchiveError(ValueError):
    """An archive that cannot be used at all (missing, not a tar, empty)."""


@dataclass(frozen=True)
class Rejected:
    """A file that did not make it into the metadata table, and why."""

    path: str
    reason: str
    detail: str


def unsafe_member_reason(member: tarfile.TarInfo) -> str | None:
    """Why extracting this tar member could harm the machine, or None when it is safe."""
    name = member.name
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or ":" in name.split("/")[0]:
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "path escapes the target folder ('..')"
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    if member.isdev() or member.isfifo():
        return "device or pipe"
    if not (member.isfile() or member.isdir()):
        return "not a regular file"
    return None


def extract_archive(archive: Path, target: Path) -> tuple[list[str], list[Rejected]]:
    """Extract the regular files of a tar archive under `target`, refusing unsafe members.

    Returns:
        The relative paths written (POSIX style) and the members refused.

    Raises:
        ArchiveError: when the archive is missing, unreadable or holds no file.
    """
    if not archive.is_file():
        raise ArchiveError(f"{archive}: archive not found")
    written: list[str] = []
    refused: list[Rejected] = []
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tqdm(tar, desc="extract", unit=" files", mininterval=1.0):
                reason = unsafe_member_reason(member)
                if reason is not None:
                    refused.append(Rejected(member.name, UNSAFE_MEMBER, reason))
                    log.warning("%s: refused to extract: %s", member.name, reason)
                    continue
                if member.isdir():
                    continue
                # The 'data' filter is a second guard: it also strips modes such as setuid.
                tar.extract(member, target, filter="data")
                written.append(member.name)
    except tarfile.TarError as error:
        raise ArchiveError(f"{archive}: not a readable tar archive ({error})") from error
    if not written:
        raise ArchiveError(f"{archive}: empty archive: no regular file to ingest")
    return sorted(written), refused


def describe_image(path: Path) -> dict:
    """Content hash, size, mode and quality statistics of one image file.

    Decoding uses JPEG draft mode (DCT scaling) straight to the thumbnail size, which is
    several times faster than a full decode and gives the same statistics at that scale.

    Raises:
        ValueError: one line naming the file when it is not a decodable image.
    """
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, mode = image.width, image.height, image.mode
            image.draft("RGB", (QUALITY_SIZE, QUALITY_SIZE))
            pixels = image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path.name}: {decode_failure(error, data)}") from error
    if pixels.size != (QUALITY_SIZE, QUALITY_SIZE):
        pixels = pixels.resize((QUALITY_SIZE, QUALITY_SIZE), Image.Resampling.BILINEAR)
    rgb = np.asarray(pixels, dtype=np.float32) / 255.0
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": width,
        "height": height,
        "mode": mode,
        "bytes": len(data),
        **image_quality(rgb),
    }


def image_quality(rgb: np.ndarray) -> dict[str, float]:
    """Brightness, contrast, blur and colour statistics of an RGB array in [0, 1].

    `blur` is the variance of the Laplacian of the grey image: low values mean a blurry photo.
    Channels are handled as separate planes: numpy reductions over a length-3 last axis are
    slow, and this runs once per image on every ingest, predict and drift call.
    """
    red, green, blue = (np.ascontiguousarray(rgb[..., channel]) for channel in range(3))
    grey = 0.299 * red + 0.587 * green + 0.114 * blue
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
    channel_max = np.maximum(np.maximum(red, green), blue)
    channel_min = np.minimum(np.minimum(red, green), blue)
    saturation = (channel_max - channel_min) / np.maximum(channel_max, 1e-6)
    return {
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "blur": float(laplacian.var() * 255.0**2),  # in grey levels squared, the usual unit
        "red": float(red.mean()),
        "green": float(green.mean()),
        "blue": float(blue.mean()),
        "saturation": float(saturation.mean()),
    }


def _describe_or_error(path: Path) -> dict | str:
    try:
        return describe_image(path)
    except ValueError as error:
        return str(error)


def describe_images(paths: Sequence[Path], workers: int = 0) -> list[dict | str]:
    """Describe many images in parallel; each result is a dict or a one-line error string.

    Args:
        paths: image files.
        workers: processes to use; 0 means one per CPU core.
    """
    workers = workers or os.cpu_count() or 1
    progress = dict(total=len(paths), desc="describe", unit=" img", mininterval=1.0)
    if workers == 1 or len(paths) < 64:
        return [_describe_or_error(path) for path in tqdm(paths, **progress)]
    chunk = max(16, len(paths) // (workers * 16))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(_describe_or_error, paths, chunksize=chunk), **progress))


def build_tables(
    relative_paths: Iterable[str],
    root: Path,
    min_age: int,
    max_age: int,
    workers: int = 0,
) -> tuple[pd.DataFrame, list[Rejected]]:
    """Labels and image statistics for every file, split into usable rows and rejections.

    Args:
        relative_paths: files under `root`, POSIX style.
        root: the folder the archive was extracted into.
        min_age: youngest accepted age in years.
        max_age: oldest accepted age in years.
        workers: processes for decoding; 0 means one per CPU core.
    """
    rejected: list[Rejected] = []
    labelled: list[tuple[str, object]] = []
    for relative in relative_paths:
        try:
            labelled.append((relative, parse_label(PurePosixPath(relative).name)))
        except LabelError as error:
            rejected.append(Rejected(relative, UNPARSABLE_NAME, str(error)))

    descriptions = describe_images([root / relative for relative, _ in labelled], workers=workers)
    rows = []
    for (relative, label), description in zip(labelled, descriptions, strict=True):
        if isinstance(description, str):
            rejected.append(Rejected(relative, UNDECODABLE_IMAGE, description))
        else:
            rows.append(
                {
                    "path": relative,
                    **description,
                    "age": label.age,
                    "age_group": age_to_group(label.age),
                    "gender": label.gender,
                    "ethnicity": label.ethnicity,
                    "source": label.source,
                }
            )
    table = pd.DataFrame(rows, columns=METADATA_COLUMNS)
    # copies first, then ages: a copy whose other label is out of range is still a conflict
    table, duplicates = drop_duplicates(table)
    out_of_range = ~table["age"].between(min_age, max_age)
    rejected += [
        Rejected(path, AGE_OUT_OF_RANGE, f"{path}: age {age} outside [{min_age}, {max_age}]")
        for path, age in zip(table.loc[out_of_range, "path"], table.loc[out_of_range, "age"], strict=True)
    ]
    table = table[~out_of_range].reset_index(drop=True)
    return table.astype(METADATA_DTYPES), rejected + duplicates


METADATA_COLUMNS = [
    "path", "sha256", "width", "height", "mode", "bytes",
    "brightness", "contrast", "blur", "red", "green", "blue", "saturation",
    "age", "age_group", "gender", "ethnicity", "source",
]  # fmt: skip
METADATA_DTYPES = {
    "path": "string", "sha256": "string", "width": "int32", "height": "int32",
    "mode": "string", "bytes": "int64", "brightness": "float32", "contrast": "float32",
    "blur": "float32", "red": "float32", "green": "float32", "blue": "float32",
    "saturation": "float32", "age": "int16", "age_group": "int8", "gender": "Int8",
    "ethnicity": "Int8", "source": "string",
}  # fmt: skip


def drop_duplicates(table: pd.DataFrame) -> tuple[pd.DataFrame, list[Rejected]]:
    """Keep one copy of byte-identical images with equal labels; reject all copies whose labels conflict."""
    label_columns = ["age", "gender", "ethnicity"]
    table = table.sort_values("path", kind="stable").reset_index(drop=True)
    copies = table[table.duplicated("sha256", keep=False)]
    rejected: list[Rejected] = []
    drop: list[int] = []
    for _sha, group in copies.groupby("sha256", sort=True):
        labels = group[label_columns].astype("string").fillna("?").agg("/".join, axis=1)
        paths = group["path"].tolist()
        if labels.nunique() > 1:
            described = ", ".join(f"{p} ({lab})" for p, lab in zip(paths, labels, strict=True))
            for path in paths:
                detail = f"{path}: same image as others with other labels (age/gender/ethnicity): {described}"
                rejected.append(Rejected(path, CONFLICTING_DUPLICATE, detail))
            drop.extend(group.index)
        else:
            for path in paths[1:]:
                rejected.append(Rejected(path, DUPLICATE, f"{path}: same image as {paths[0]}, kept once"))
            drop.extend(group.index[1:])
    return table.drop(index=drop).reset_index(drop=True), rejected


def quarantine_table(rejected: Iterable[Rejected]) -> pd.DataFrame:
    """The rejected files as a table, sorted for stable diffs."""
    table = pd.DataFrame([vars(item) for item in rejected], columns=QUARANTINE_COLUMNS)
    return table.sort_values(["reason", "path"], kind="stable").reset_index(drop=True).astype("string")


def summary(metadata: pd.DataFrame, quarantine: pd.DataFrame, files_in: int, seconds: float) -> dict:
    """Counts in, out and per rejection reason, for the metrics file and the log."""
    return {
        "files_in": files_in,
        "images_out": len(metadata),
        "quarantined": len(quarantine),
        "quarantine_by_reason": {
            k: int(v) for k, v in quarantine["reason"].value_counts().sort_index().items()
        },
        "images_per_group": {
            int(k): int(v) for k, v in metadata["age_group"].value_counts().sort_index().items()
        },
        "seconds": round(seconds, 1),
    }


def ingest(
    archive: Path,
    images_dir: Path,
    trusted_sha256: dict[str, str],
    min_age: int,
    max_age: int,
    workers: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Verify, extract and describe an archive: the whole ingest step.

    Returns:
        The metadata table, the quarantine table and a summary of counts.
    """
    from agerange.files import atomic_path, verify_sha256

    started = time.monotonic()
    if not archive.is_file():  # before hashing it: one line, not a traceback
        raise ArchiveError(
            f"{archive}: archive not found" if not archive.exists() else f"{archive}: not a file"
        )
    source = verify_sha256(archive, trusted_sha256)
    log.info("%s: checksum matches %s", archive, source)
    with atomic_path(images_dir) as staging:
        written, refused = extract_archive(archive, staging)
        metadata, rejected = build_tables(written, staging, min_age, max_age, workers)
    quarantine = quarantine_table(refused + rejected)
    for detail in quarantine["detail"]:
        log.warning("quarantined: %s", detail)
    counts = summary(metadata, quarantine, len(written) + len(refused), time.monotonic() - started)
    return metadata, quarantine, counts
