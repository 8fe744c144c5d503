"""What every stage entry point needs first: its params.yaml section and a configured log."""

import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml


def load_params(section: str, path: Path = Path("params.yaml")) -> dict[str, Any]:
    """One section of params.yaml (each stage reads only its own)."""
    with open(path) as stream:
        params = yaml.safe_load(stream) or {}
    if section not in params:
        raise KeyError(f"{path}: no section '{section}' (sections: {', '.join(params)})")
    return params[section]


def setup_logging(level: str | None = None) -> None:
    """Plain one-line log records on stderr; called once, by entry points only."""
    logging.basicConfig(
        level=level or os.environ.get("AGERANGE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def fail(message: str) -> None:
    """Stop an entry point with a one-line error and a non-zero exit status."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)
