"""The local web page (`agerange web`): the /predict endpoint over HTTP and the page in headless Chromium."""

import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agerange.inference import group_name
from agerange.predict import AgePredictor
from agerange.web import MAX_BODY_BYTES, make_server
from tests.conftest import FAIRFACE

CHROMIUM = Path("/usr/bin/chromium")
GROUP_LABELS = [group_name(index) for index in range(10)]


@pytest.fixture(scope="module")
def web_url(packaged_model: Path) -> Iterator[str]:
    """The web app on a free port, served from a background thread."""
    server = make_server(AgePredictor.from_directory(packaged_model), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def post_photo(url: str, data: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/predict?name=upload.jpg", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_page_is_served(web_url: str) -> None:
    with urllib.request.urlopen(f"{web_url}/", timeout=10) as response:
        page = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/html")
    assert 'id="photo"' in page and 'id="results"' in page and 'id="status"' in page


@pytest.mark.slow
def test_predict_endpoint_finds_faces_in_a_real_photo(web_url: str) -> None:
    status, body = post_photo(web_url, sorted(FAIRFACE.glob("*.jpg"))[0].read_bytes())
    assert status == 200, body
    assert body["error"] is None and body["photo"] == "upload.jpg"
    assert (body["width"], body["height"]) == (448, 448)
    assert body["faces"], body
    face = body["faces"][0]
    assert face["age_group"] in GROUP_LABELS and 0 < face["probability"] <= 1
    x0, y0, x1, y1 = face["box"]
    assert 0 <= x0 < x1 <= 448 and 0 <= y0 < y1 <= 448


@pytest.mark.slow
def test_predict_endpoint_rejects_garbage_with_one_line(web_url: str) -> None:
    status, body = post_photo(web_url, b"not an image")
    assert status == 400
    assert body["error"] and "\n" not in body["error"]
    assert "upload.jpg" in body["error"]


@pytest.mark.slow
def test_predict_endpoint_refuses_a_huge_body_unread(web_url: str) -> None:
    from http.client import HTTPConnection

    host, port = web_url.removeprefix("http://").split(":")
    connection = HTTPConnection(host, int(port), timeout=10)
    # announce more than the limit but send nothing: the server must answer without waiting for it
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert "MB" in json.loads(response.read())["error"]
    connection.close()


@pytest.mark.slow
def test_page_in_chromium_shows_faces(web_url: str, tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} missing: install Debian's chromium package (`.ci/run` does)")
    from playwright.sync_api import sync_playwright

    screenshots = tmp_path / "screenshots"
    screenshots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(web_url)
            page.set_input_files("#photo", sorted(FAIRFACE.glob("*.jpg"))[0])
            page.wait_for_selector("#results tbody tr", timeout=60_000)
            text = page.inner_text("#results")
            assert any(label in text for label in GROUP_LABELS), text
            assert "face" in page.inner_text("#status")
            assert page.is_visible("#canvas")
            shot = screenshots / "web_page.png"
            page.screenshot(path=shot, full_page=True)

            # a file that is not an image: the server's one-line message, no table
            page.set_input_files(
                "#photo", files=[{"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"not an image"}]
            )
            page.wait_for_selector("#status.error", timeout=30_000)
            assert "broken.jpg" in page.inner_text("#status")
            assert not page.is_visible("#results")
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("AGERANGE_SCREENSHOTS"):
        target = Path(os.environ["AGERANGE_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, target / shot.name)
