"""Ingest throughput: the project's describe step against a naive single-process PIL loop.

Both read the same extracted files in the same run and compute the same kind of record
(sha256, size, mode, brightness, contrast, blur). Prints a table and the speed-up ratio.

    python bench/ingest_throughput.py [--archive ../shared/data/UTKFace.tar] [--limit N]
"""

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from agerange.ingest import describe_images, extract_archive


def naive_describe(path: Path) -> dict:
    """What a straightforward script does: full decode, full-resolution statistics, one file at a time."""
    data = path.read_bytes()
    image = Image.open(path)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": image.width,
        "height": image.height,
        "mode": image.mode,
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "blur": float(laplacian.var()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archive", type=Path, default=Path("../shared/data/UTKFace.tar"))
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (0 = all)")
    parser.add_argument("--workers", type=int, default=0, help="project workers (0 = one per core)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        written, _ = extract_archive(args.archive, Path(folder))
        paths = [Path(folder) / name for name in written if name.endswith(".jpg")]
        paths = paths[: args.limit or None]
        # Warm the page cache so both methods read from memory, not disk.
        for path in paths:
            path.read_bytes()

        rows = []
        started = time.perf_counter()
        naive_errors = 0
        for path in paths:
            try:
                naive_describe(path)
            except OSError:
                naive_errors += 1
        rows.append(("naive: 1 process, full decode (PIL)", time.perf_counter() - started))

        started = time.perf_counter()
        describe_images(paths, workers=args.workers)
        rows.append(("agerange: draft decode, process pool", time.perf_counter() - started))

    baseline = rows[0][1]
    print(f"\ningest throughput on {len(paths)} images from {args.archive.name}\n")
    print(f"| {'method':<40} | {'seconds':>8} | {'images/s':>9} | {'speed-up':>8} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 11}|{'-' * 10}|")
    for name, seconds in rows:
        print(
            f"| {name:<40} | {seconds:>8.2f} | {len(paths) / seconds:>9.0f} | {baseline / seconds:>7.2f}x |"
        )
    print(f"\ntarget: at least 2x; measured {baseline / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
