"""A tiny local web page for people: pick a photo, see each face's box and age group.

Standard library only (http.server): GET / returns the page, POST /predict takes the raw photo
bytes as the body and answers with `PhotoPrediction.as_dict()` as JSON. Meant for one person on
their own machine (`agerange web`), not for the internet: use `mlflow models serve` for that.
"""

import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agerange.predict import MAX_PHOTO_BYTES, AgePredictor

log = logging.getLogger(__name__)

MAX_BODY_BYTES = MAX_PHOTO_BYTES  # refused from Content-Length alone: a runaway upload is never read
PAGE_FILE = "web_page.html"


def page_html() -> bytes:
    """The single self-contained page (HTML, CSS and script in one file)."""
    return resources.files("agerange").joinpath(PAGE_FILE).read_bytes()


def one_line(message: str) -> str:
    """An error message on one line, so it fits a status bar and a JSON field."""
    return " ".join(message.split())


class PredictHandler(BaseHTTPRequestHandler):
    """GET / is the page; POST /predict takes a photo's bytes and answers with its faces as JSON."""

    server_version = "agerange"
    predictor: AgePredictor  # these two are set by `make_server` on a subclass
    page: bytes

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if urlsplit(self.path).path not in ("/", "/index.html"):
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"{self.path}: not found"})
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/predict":
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"{url.path}: not found"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.send_json(HTTPStatus.LENGTH_REQUIRED, {"error": "send the photo with a Content-Length"})
            return
        if length > MAX_BODY_BYTES:
            # the body stays unread, so this connection cannot carry another request
            self.close_connection = True
            limit = MAX_BODY_BYTES // (1024 * 1024)
            self.send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"photo larger than {limit} MB"})
            return
        body = self.rfile.read(length) if length > 0 else b""
        if not body:
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": "empty request: send the photo's bytes"})
            return
        name = parse_qs(url.query).get("name", ["photo"])[0][-200:] or "photo"
        try:
            result = self.predictor.predict_file(body, name=name)
        except Exception as error:  # keep serving the next photo; the log has the traceback
            log.exception("prediction failed for %s", name)
            self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": one_line(f"{name}: {error}")})
            return
        if result.error:
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": one_line(result.error)})
            return
        self.send_json(HTTPStatus.OK, result.as_dict())

    def log_message(self, format: str, *args: Any) -> None:
        # through logging rather than raw stderr, so the CLI's log level applies
        log.info("%s %s", self.address_string(), format % args)


def make_server(predictor: AgePredictor, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server answering the page and /predict; port 0 picks a free port (see `server_address`)."""
    # one thread per request: the predictor decodes and detects in each request's own thread
    # (a detector per thread) and runs the classifier one batch at a time
    settings = {"predictor": predictor, "page": page_html()}
    return ThreadingHTTPServer((host, port), type("Handler", (PredictHandler,), settings))


def serve_web(predictor: AgePredictor, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the page until Ctrl-C."""
    server = make_server(predictor, host, port)
    bound_host, bound_port = server.server_address[:2]
    print(f"agerange web page: http://{bound_host}:{bound_port}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
