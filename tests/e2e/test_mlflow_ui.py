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


def _shown(page, url: str, texts: list[str], screenshot: Path | None = None) -> None:
    """Open `url` and wait until its DOM holds every one of `texts` (the UI fills it in by script)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(url, timeout=60_000)
    try:
        page.wait_for_function(
            "texts => texts.every(text => document.documentElement.innerHTML.includes(text))", arg=texts,
            timeout=60_000,
        )  # fmt: skip
    except PlaywrightTimeout:
        missing = [text for text in texts if text not in page.content()]
        raise AssertionError(f"{url}: not shown after 60 s: {missing}") from None
    if screenshot is not None:
        page.wait_for_timeout(1000)  # the texts are in the page; let it finish drawing around them
        page.screenshot(path=str(screenshot))


def test_ui_shows_experiment_run_metrics_and_artifacts(ui, store_with_run, tmp_path_factory):
    assert CHROMIUM, "Chromium is needed for this test: apt-get install chromium (CI's .ci/run does)"
    from playwright.sync_api import sync_playwright

    _, experiment, run_id = store_with_run
    output = tmp_path_factory.mktemp("mlflow_ui_screenshots")
    run_url = f"{ui}/#/experiments/{experiment}/runs/{run_id}"
    with sync_playwright() as playwright:  # one headless Chromium for the three pages
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            runs_url = f"{ui}/#/experiments/{experiment}/runs"
            # each page as soon as it shows these texts
            _shown(page, runs_url, ["agerange", "train-mobilenet_v2"], output / "runs.png")
            run_texts = ["val_accuracy", "test_within_one", "train.unfreeze_layers"]
            _shown(page, run_url, run_texts, output / "run.png")
            _shown(page, f"{run_url}/artifacts", ["evaluation"])
        finally:
            browser.close()

    screenshot = output / "run.png"
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
