"""Shared fixtures: the real mini data set, tiny synthetic images, the project root."""

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AGERANGE_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
MLFLOW_STORE_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _forget_mlflow_store() -> None:
    for name in MLFLOW_STORE_VARIABLES:
        os.environ.pop(name, None)


# The longest files (minutes each on 2 cores), in the order the two test processes should start
# them: each process takes whole files, the next one as it finishes one, so the short files
# fill in at the end instead of a long one running alone.
LONGEST_FILES_FIRST = (
    "tests/e2e/test_team.py",
    "tests/model/test_training.py",
    "tests/e2e/test_sweep.py",
    "tests/e2e/test_data_pipeline.py",
    "tests/e2e/test_mlflow_ui.py",
    "tests/model/test_behaviour.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = [path for path in LONGEST_FILES_FIRST if not (PROJECT_ROOT / path).is_file()]
    if missing:  # a renamed file would silently lose its place
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FILES_FIRST: no such file {', '.join(missing)}")
    rank = {path: position for position, path in enumerate(LONGEST_FILES_FIRST)}
    # a stable sort: every other file keeps its place, and every file its tests' order
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session", autouse=True)
def no_mlflow_store_from_the_shell():
    """Tests log to stores of their own: never to a server the developer's shell points at."""
    _forget_mlflow_store()


@pytest.fixture(autouse=True)
def no_mlflow_store_from_an_earlier_test():
    """`mlflow.set_tracking_uri` exports MLFLOW_TRACKING_URI for child processes, and the stages
    honour it: a test that called it must not send a later test's pipeline to its store."""
    _forget_mlflow_store()
    yield
    _forget_mlflow_store()


@pytest.fixture(scope="session")
def mini_archive() -> Path:
    """UTKFace-mini.tar from the local mirror (613 files, every known defect)."""
    path = SHARED_DATA / "UTKFace-mini.tar"
    assert path.is_file(), f"{path} missing: set AGERANGE_SHARED_DATA to the folder holding it"
    return path


@pytest.fixture(scope="session")
def mini_ingested(mini_archive: Path, tmp_path_factory: pytest.TempPathFactory):
    """The mini set through the real ingest step: (images folder, metadata, quarantine)."""
    from agerange.ingest import ingest

    images = tmp_path_factory.mktemp("mini") / "images"
    metadata, quarantine, _ = ingest(
        archive=mini_archive,
        images_dir=images,
        trusted_sha256={"UTKFace-mini.tar": _trusted()["UTKFace-mini.tar"]},
        min_age=1,
        max_age=116,
        workers=2,
    )
    return images, metadata, quarantine


def _trusted() -> dict[str, str]:
    import yaml

    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["ingest"]["trusted_sha256"]


def jpeg_bytes(size: int = 32, seed: int = 0, mode: str = "RGB") -> bytes:
    """A small random-texture JPEG (different seeds give different bytes)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_tar(path: Path, files: dict[str, bytes], top: str = "faces") -> Path:
    """A tar archive holding `files` (name -> bytes) under a top folder."""
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def metadata_frame(rows: list[dict]) -> pd.DataFrame:
    """A metadata-like table with just the columns the split and rebalance steps use."""
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def packaged_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real packaged model folder (as the package stage writes it) around an untrained small CNN
    at 32 px: the detector, alignment, TFLite classifier and pyfunc are all the real ones."""
    import keras

    from agerange.config import load_section
    from agerange.labels import GROUP_NAMES
    from agerange.model import build_classifier
    from agerange.serving import package

    keras.utils.set_random_seed(0)
    model = build_classifier("small_cnn", 32, Path("unused"), dropout=0.1)
    info = {"backbone": "small_cnn", "image_size": 32, "class_names": list(GROUP_NAMES)}
    folder = tmp_path_factory.mktemp("packaged") / "serving"
    package(model, info, folder, load_section("package", PROJECT_ROOT / "params.yaml"))
    return folder


FAIRFACE = SHARED_DATA / "new_photos" / "fairface"
