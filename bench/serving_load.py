"""Load test of the two served endpoints, on loopback: `mlflow models serve` and `agerange web`.

For each server and each number of concurrent clients (1, 4, 16 by default), every client posts
real photos one after another for a fixed time (and at most --max-requests in all): requests/s,
p50/p95/p99 latency, errors (anything but a 200 with faces; must be 0), and the server's memory
(resident set of its whole process tree) before and after. The row with the fewest clients (1 by
default) is the baseline the others are compared with (`x fewest`), measured in the same run.
Then malformed requests (bad base64, not an image, a 50 MB body, wrong JSON columns, invalid
JSON, an empty body) must each get a 4xx whose reason is one line, and a real photo after them
must still be answered.

    python bench/serving_load.py [--serving data/serving] [--photos data/new_photos]
        [--clients 1 4 16] [--seconds 10] [--max-requests 2000]

tests/serving/test_load.py runs the same code for a few seconds with 4 clients.
"""

import argparse
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

START_TIMEOUT_S = 120
HUGE_BYTES = 50 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    """A server process on loopback, in its own process group (its workers go down with it)."""

    name: str
    port: int
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass

    def memory_mb(self) -> float:
        """Resident memory of the server and all its descendants, in MB (Linux /proc)."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        total, stack = 0, [self.process.pid]
        while stack:
            pid = stack.pop()
            stack.extend(children.get(pid, []))
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total += next(
                (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")), 0
            )
        return total / 1024


def start_server(kind: str, model: Path, log_dir: Path) -> Server:
    """Start `mlflow models serve` ("mlflow") or `agerange web` ("web") on a free port and wait
    until it answers."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if kind == "mlflow":
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            str(model),
            "--env-manager",
            "local",
        ]
        command += ["-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
        ready = "/ping"
    else:
        command = [sys.executable, "-m", "agerange.cli", "web", "--model", str(model), "--port", str(port)]
        ready = "/"
    log = log_dir / f"{kind}_server.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = Server(kind, port, process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} server exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            if request(port, "GET", ready, b"", {})[0] == 200:
                return server
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(
        f"{kind} server did not answer {ready} within {START_TIMEOUT_S} s: {log.read_text()[-2000:]}"
    )


def request(port: int, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One HTTP request on a fresh connection; a server that answers before reading a large body
    whole (and closes) still gives its status."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.putrequest(method, path)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            connection.putheader(key, value)
        connection.endheaders()
        try:
            for start in range(0, len(body), 1 << 20):
                connection.send(body[start : start + (1 << 20)])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole body was read: its answer is still there to read
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def mlflow_body(images: list[str | bytes], column: str = "image") -> bytes:
    """A `dataframe_split` request: photo bytes are base64-encoded, text is sent as it is."""
    cells = [[base64.b64encode(i).decode() if isinstance(i, bytes) else i] for i in images]
    return json.dumps({"dataframe_split": {"columns": [column], "data": cells}}).encode()


def post_photo(server: Server, photo: bytes) -> tuple[int, bytes]:
    """Post one photo the way each server takes it."""
    if server.name == "mlflow":
        return request(
            server.port, "POST", "/invocations", mlflow_body([photo]), {"Content-Type": "application/json"}
        )
    return request(
        server.port, "POST", "/predict?name=photo.jpg", photo, {"Content-Type": "application/octet-stream"}
    )


def answered(server: Server, status: int, body: bytes) -> bool:
    """A 200 that holds at least one classified face."""
    if status != 200:
        return False
    answer = json.loads(body)
    if server.name == "mlflow":
        return any(row["face"] >= 0 for row in answer["predictions"])
    return bool(answer["faces"])


@dataclass
class LevelResult:
    server: str
    clients: int
    requests: int
    seconds: float
    latencies: list[float] = field(repr=False)
    errors: int
    memory_before_mb: float
    memory_after_mb: float
    first_error: str = ""

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies) * 1000, q)) if self.latencies else float("nan")


def run_level(
    server: Server, photos: list[bytes], clients: int, seconds: float, max_requests: int
) -> LevelResult:
    """`clients` threads posting photos in turn until `seconds` pass or `max_requests` are sent."""
    lock = threading.Lock()
    latencies, errors, sent, first_error = [], [0], [0], []
    deadline = time.monotonic() + seconds

    def client(offset: int) -> None:
        index = offset
        while time.monotonic() < deadline:
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
            started = time.perf_counter()
            try:
                status, body = post_photo(server, photos[index % len(photos)])
                ok = answered(server, status, body)
                reason = f"{status}: {body[:200]!r}"
            except (OSError, ValueError, KeyError) as error:
                ok, reason = False, repr(error)
            with lock:
                latencies.append(time.perf_counter() - started)
                if not ok:
                    errors[0] += 1
                    first_error.append(reason)
            index += clients

    before = server.memory_mb()
    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(offset,)) for offset in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return LevelResult(
        server.name, clients, len(latencies), elapsed, latencies, errors[0], before, server.memory_mb(),
        first_error[0] if first_error else "",
    )  # fmt: skip


def malformed_requests(server: Server, photo: bytes) -> list[tuple[str, int, str]]:
    """Each malformed request, its status, and the reason the server gave (the JSON message)."""
    json_headers = {"Content-Type": "application/json"}
    if server.name == "mlflow":
        cases: dict[str, Callable[[], tuple[int, bytes]]] = {
            "bad base64": lambda: request(
                server.port,
                "POST",
                "/invocations",
                json.dumps({"inputs": {"image": ["%%% not base64 %%%"]}}).encode(),
                json_headers,
            ),
            "not an image": lambda: request(
                server.port, "POST", "/invocations", mlflow_body([b"not an image"]), json_headers
            ),
            "50 MB body": lambda: request(
                server.port,
                "POST",
                "/invocations",
                mlflow_body([b"\xff\xd8" + bytes(HUGE_BYTES)]),
                json_headers,
            ),
            "wrong JSON columns": lambda: request(
                server.port, "POST", "/invocations", mlflow_body([photo], column="picture"), json_headers
            ),
            "invalid JSON": lambda: request(
                server.port, "POST", "/invocations", b'{"dataframe_split": [', json_headers
            ),
        }
    else:
        octet = {"Content-Type": "application/octet-stream"}
        cases = {
            "not an image": lambda: request(server.port, "POST", "/predict", b"not an image", octet),
            "50 MB body": lambda: request(server.port, "POST", "/predict", bytes(HUGE_BYTES), octet),
            "empty body": lambda: request(server.port, "POST", "/predict", b"", octet),
        }
    results = []
    for name, send in cases.items():
        status, body = send()
        results.append((name, status, error_reason(body)))
    return results


def error_reason(body: bytes) -> str:
    """The reason in an error answer: MLflow's `message` or the web page's `error`."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")
    return (
        str(answer.get("message") or answer.get("error") or answer)
        if isinstance(answer, dict)
        else str(answer)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serving", type=Path, default=Path("data/serving"))
    parser.add_argument("--photos", type=Path, default=Path("data/new_photos"))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=10.0, help="per server and number of clients")
    parser.add_argument("--max-requests", type=int, default=2000, help="per server and number of clients")
    parser.add_argument("--servers", nargs="+", default=["mlflow", "web"], choices=["mlflow", "web"])
    parser.add_argument("--logs", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    photos = [p.read_bytes() for p in sorted(args.photos.rglob("*.jpg"))[:200]]
    print(f"{len(photos)} photos from {args.photos}; model {args.serving}; {os.cpu_count()} CPU cores\n")
    print(
        f"{'server':<7} {'clients':>7} {'requests':>8} {'req/s':>7} {'x fewest':>10} {'p50 ms':>7} "
        f"{'p95 ms':>7} {'p99 ms':>7} {'errors':>6} {'MB before':>9} {'MB after':>8}"
    )
    malformed = {}
    for kind in args.servers:
        server = start_server(kind, args.serving, args.logs)
        try:
            post_photo(server, photos[0])  # warm-up
            baseline = None
            for clients in sorted(args.clients):  # the fewest clients first: the others' baseline
                level = run_level(server, photos, clients, args.seconds, args.max_requests)
                baseline = level.per_second if baseline is None else baseline
                ratio = level.per_second / baseline if baseline else float("nan")
                figures = [
                    f"{kind:<7} {clients:>7} {level.requests:>8} {level.per_second:>7.1f}",
                    f"{ratio:>10.2f} {level.percentile(50):>7.1f}",
                    f"{level.percentile(95):>7.1f} {level.percentile(99):>7.1f} {level.errors:>6}",
                    f"{level.memory_before_mb:>9.0f} {level.memory_after_mb:>8.0f}",
                ]
                note = f"  first error: {level.first_error}" if level.errors else ""
                print(" ".join(figures) + note)
            malformed[kind] = malformed_requests(server, photos[0])
            status, body = post_photo(server, photos[0])
            malformed[kind].append(
                ("a photo after them", status, "answered" if answered(server, status, body) else "")
            )
            malformed[kind].append(("memory after them (MB)", 0, f"{server.memory_mb():.0f}"))
        finally:
            server.stop()
    print(f"\n{'server':<7} {'malformed request':<24} {'status':>6}  reason (its last line; lines in all)")
    for kind, rows in malformed.items():
        for name, status, reason in rows:
            lines = reason.splitlines() or [""]
            print(f"{kind:<7} {name:<24} {status or '':>6}  {lines[-1][:90]} ({len(lines)})")


if __name__ == "__main__":
    main()
