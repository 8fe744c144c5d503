"""The packaged model behind the real `mlflow models serve` scoring server, over HTTP."""

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agerange.inference import group_name
from bench.serving_load import free_port
from tests.conftest import FAIRFACE

GROUP_LABELS = {group_name(index) for index in range(10)}
START_TIMEOUT_S = 90  # TensorFlow and the detector load in the worker before /ping answers


def wait_until_ready(server: subprocess.Popen, url: str, log: Path) -> None:
    """Poll /ping until it answers; fail with the server's output if it exits or never answers."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited ({server.returncode}):\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow models serve not ready after {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@pytest.mark.slow
def test_served_model_answers_real_and_corrupt_photos(packaged_model: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(packaged_model)]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    with open(log, "wb") as output:
        # its own process group, so the uvicorn worker goes down with it
        server = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_until_ready(server, url, log)
        photos = sorted(FAIRFACE.glob("*.jpg"))[:2]
        images = [photo.read_bytes() for photo in photos] + [b"not an image"]
        body = {
            "dataframe_split": {
                "columns": ["image"],
                "data": [[base64.b64encode(i).decode()] for i in images],
            }
        }
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                rows = json.loads(response.read())["predictions"]
        except urllib.error.HTTPError as error:
            pytest.fail(
                f"/invocations answered {error.code}: {error.read()[:2000]!r}\n{log.read_text()[-4000:]}"
            )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

    for index in (0, 1):
        faces = [row for row in rows if row["photo"] == index]
        assert faces, f"{photos[index].name}: no rows"
        for row in faces:
            assert row["face"] >= 0 and not row["error"], row
            assert 0 <= row["x0"] < row["x1"] <= 448 and 0 <= row["y0"] < row["y1"] <= 448, row
            assert row["age_group"] in GROUP_LABELS, row
            assert 0 < row["probability"] <= 1, row
            assert 0 <= row["eye_spacing"] < 1, row
    corrupt = [row for row in rows if row["photo"] == 2]
    assert len(corrupt) == 1 and corrupt[0]["face"] == -1, corrupt
    assert corrupt[0]["error"], corrupt


def test_every_request_format_of_the_scoring_server_reaches_the_model(packaged_model: Path) -> None:
    """MLflow's scoring server decodes base64 itself for DataFrame requests but hands `inputs`
    and `instances` requests over as base64 text: every format must get the same answer."""
    import mlflow.pyfunc
    from mlflow.pyfunc.scoring_server import invocations

    model = mlflow.pyfunc.load_model(str(packaged_model))
    schema = model.metadata.get_input_schema()
    photo = base64.b64encode((FAIRFACE / "fairface_0002.jpg").read_bytes()).decode()
    requests = {
        "dataframe_split": {"dataframe_split": {"columns": ["image"], "data": [[photo]]}},
        "dataframe_records": {"dataframe_records": [{"image": photo}]},
        "inputs": {"inputs": {"image": [photo]}},
        "instances": {"instances": [{"image": photo}]},
    }
    answers = {}
    for kind, body in requests.items():
        response = invocations(json.dumps(body), "application/json", model, schema)
        assert response.status == 200, (kind, response.response[:300])
        answers[kind] = json.loads(response.response)["predictions"]
    first = answers["dataframe_split"]
    assert len(first) == 1 and first[0]["face"] == 0 and not first[0]["error"]
    assert all(rows == first for rows in answers.values()), answers
