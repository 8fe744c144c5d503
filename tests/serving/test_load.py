"""Both served endpoints under 4 concurrent clients, and malformed requests mixed in
(bench/serving_load.py's own code, for a few seconds on a tiny model)."""

from pathlib import Path

import pytest

from bench.serving_load import answered, malformed_requests, post_photo, run_level, start_server
from tests.conftest import FAIRFACE

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["mlflow", "web"])
def test_four_concurrent_clients_get_answers_and_malformed_requests_get_a_4xx(
    kind: str, packaged_model: Path, tmp_path: Path
) -> None:
    photos = [photo.read_bytes() for photo in sorted(FAIRFACE.glob("*.jpg"))[:16]]
    server = start_server(kind, packaged_model, tmp_path)
    try:
        level = run_level(server, photos, clients=4, seconds=3.0, max_requests=400)
        malformed = malformed_requests(server, photos[0])
        status, body = post_photo(server, photos[1])
        still_serving = answered(server, status, body)
    finally:
        server.stop()
    log = server.log.read_text()[-3000:]
    assert level.requests >= 4 and level.errors == 0, f"{level.first_error}\n{log}"
    for name, status, reason in malformed:
        assert 400 <= status < 500, f"{name}: {status} {reason[:300]}"
        assert reason.strip(), name
    reasons = {name: reason.splitlines()[-1] for name, _, reason in malformed}
    # our own refusals: the last line (MLflow puts its echo of the request before it) names the
    # photo and the reason
    assert "not an image or corrupt" in reasons["not an image"]
    assert ("over the 30 MB limit" if kind == "mlflow" else "larger than 30 MB") in reasons["50 MB body"]
    if kind == "mlflow":
        assert "no 'image' column of photo bytes" in reasons["wrong JSON columns"]
    if kind == "web":
        assert all(len(reason.splitlines()) == 1 for _, _, reason in malformed)
    assert still_serving, log
