"""DVC stage `ingest`: raw archive -> extracted images, metadata and quarantine tables."""

import argparse
from pathlib import Path

from agerange.config import ConfigError, fail, load_section, setup_logging
from agerange.files import ChecksumError, write_csv, write_json, write_parquet
from agerange.ingest import ArchiveError, ingest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder to extract into")
    parser.add_argument("--metadata", type=Path, required=True, help="Parquet table of usable images")
    parser.add_argument("--quarantine", type=Path, required=True, help="CSV table of rejected files")
    parser.add_argument("--summary", type=Path, required=True, help="JSON counts (a report)")
    args = parser.parse_args()
    setup_logging()
    try:
        settings = load_section("ingest")
        metadata, quarantine, counts = ingest(
            archive=args.archive,
            images_dir=args.images,
            trusted_sha256=settings.trusted_sha256,
            min_age=settings.min_age,
            max_age=settings.max_age,
            workers=settings.workers,
        )
    except (ConfigError, ArchiveError, ChecksumError) as error:
        fail(str(error))
    write_parquet(metadata, args.metadata)
    write_csv(quarantine, args.quarantine)
    write_json(counts, args.summary)
    reasons = ", ".join(f"{n} {r}" for r, n in counts["quarantine_by_reason"].items()) or "none"
    print(
        f"ingest: {counts['files_in']} files in, {counts['images_out']} images out, "
        f"{counts['quarantined']} quarantined ({reasons}) in {counts['seconds']} s; "
        f"see {args.quarantine} for every rejected file and its reason."
    )


if __name__ == "__main__":
    main()
