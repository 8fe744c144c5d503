"""DVC stage `new_photos`: copy a folder of new photos into the project, so DVC versions them.

The source is `drift.new_photos` in params.yaml (any local folder; point it at this week's
photos). Photos (JPEG, PNG, WebP) and an optional labels.csv are copied; other files are listed
and left out. The copy replaces the previous one atomically.
"""

import argparse
import shutil
from pathlib import Path

from agerange.config import ConfigError, fail, load_section, setup_logging
from agerange.files import atomic_path
from agerange.predict import PHOTO_SUFFIXES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="the project's copy of the photos")
    args = parser.parse_args()
    setup_logging()
    try:
        source = Path(load_section("drift").new_photos)
    except ConfigError as error:
        fail(str(error))
    if not source.is_dir():
        fail(f"{source}: new-photos folder not found (set drift.new_photos in params.yaml)")
    files = sorted(p for p in source.rglob("*") if p.is_file())
    photos = [p for p in files if p.suffix.lower() in PHOTO_SUFFIXES]
    if not photos:
        fail(f"{source}: empty folder (no JPEG, PNG or WebP files)")
    others = [p for p in files if p not in photos and p.name != "labels.csv"]
    with atomic_path(args.out) as folder:
        folder.mkdir(parents=True)
        for path in photos + [p for p in files if p.name == "labels.csv"]:
            target = folder / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    print(
        f"new_photos: {len(photos)} photos from {source} into {args.out}; {len(others)} other files left out"
    )


if __name__ == "__main__":
    main()
