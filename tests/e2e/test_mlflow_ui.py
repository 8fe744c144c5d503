"""The MLflow UI as users browse it: the README's command, a real store, headless Chromium."""

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agerange import tracking
from bench.serving_load import free_port

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=20000", "--window-size=1400,1000",
]  # fmt: skip


@pytest.fixture(scope="module")
def store_with_run(tmp_path_factory: pytest.TempPathFactory):
    """A tracking store holding one run with params, per-epoch metrics and a figure."""
    root = tmp_path_factory.mktemp("ui")
    experiment = tracking.use_store(root / "mlruns")
    figure = root / "confusion_matrix.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 30, 30)).save(figure)
    with tracking.start_run(experiment, "train-mobilenet_v2"):
        tracking.log_params({"backbone": "mobilenet_v2", "unfreeze_layers": 35}, prefix="train")
        hook = tracking.epoch_hook()
        for epoch, accuracy in enumerate([0.31, 0.42, 0.47], start=1):
            hook("head", epoch, {"val_accuracy": accuracy})
        tracking.log_metrics({"test_within_one": 0.9})
        tracking.log_artifacts([figure], folder="evaluation")
        run_id = tracking.active_run_id()
    return root, experiment, run_id


@pytest.fixture(scope="module")
def ui(store_with_run):
    """`mlflow ui` on 127.0.0.1, exactly as the README starts it, on a free port."""
    root, _, _ = store_with_run
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"), "ui",
        "--backend-store-uri", "sqlite:///mlruns/mlflow.db", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    server = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("mlflow ui did not answer within 60 s")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _browse(url: str, profile: Path, screenshot: Path | None = None) -> str:
    assert CHROMIUM, "Chromium is needed for this test: apt-get install chromium (CI's .ci/run does)"
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    if screenshot is not None:
        subprocess.run(
            [CHROMIUM, *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120
        )
    result = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    return result.stdout


def test_ui_shows_experiment_run_metrics_and_artifacts(ui, store_with_run, tmp_path_factory):
    _, experiment, run_id = store_with_run
    output = tmp_path_factory.mktemp("mlflow_ui_screenshots")
    profile = output / "profile"

    experiment_page = _browse(f"{ui}/#/experiments/{experiment}/runs", profile, output / "runs.png")
    assert "agerange" in experiment_page and "train-mobilenet_v2" in experiment_page

    run_page = _browse(f"{ui}/#/experiments/{experiment}/runs/{run_id}", profile, output / "run.png")
    assert "val_accuracy" in run_page and "test_within_one" in run_page
    assert "train.unfreeze_layers" in run_page

    artifacts_page = _browse(f"{ui}/#/experiments/{experiment}/runs/{run_id}/artifacts", profile)
    assert "evaluation" in artifacts_page

    screenshot = output / "run.png"
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
