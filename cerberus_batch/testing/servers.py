"""Real object stores on 127.0.0.1 for tests and benchmarks: moto's S3 server and an HTTP server
that honours Range requests, each counting the requests it answers."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

FAKE_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
DENIED_PREFIX = "/private/"  # the range server answers 403 below it, as a server refusing our credentials


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 in server mode; yields its endpoint URL (for AWS_ENDPOINT_URL)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextmanager
def s3_checks_credentials(endpoint: str) -> Iterator[None]:
    """Inside the block the moto server refuses any request not signed by an access key its IAM knows
    (moto's INITIAL_NO_AUTH_ACTION_COUNT set to 0 through its API); as before after it."""
    def set_count(count: str) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(), headers={"Content-Type": "text/plain"}), timeout=10).close()

    set_count("0")
    try:
        yield
    finally:
        set_count("inf")


class RangeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.root = root
        self.requests = 0
        self.lock = threading.Lock()
        # While this says so, every request's connection is closed unanswered (a server gone mid-run).
        self.down: Callable[[], bool] = lambda: False
        self.dropped = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


@contextmanager
def range_server(root: Path) -> Iterator[RangeServer]:
    """Serves the files under `root`, whole or by byte range (one range per request, as fsspec asks)."""
    server = RangeServer(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class _RangeHandler(BaseHTTPRequestHandler):
    server: RangeServer

    def log_message(self, *args: object) -> None:  # quiet: tests read their own output
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        with self.server.lock:
            self.server.requests += 1
            if self.server.down():
                self.server.dropped += 1
                self.close_connection = True
                return
        path = self.path.split("?", 1)[0]
        if path.startswith(DENIED_PREFIX):
            return self._empty(403)
        file = (self.server.root / path.lstrip("/")).resolve()
        if self.server.root.resolve() not in file.parents or not file.is_file():
            return self._empty(404)
        data = file.read_bytes()
        start, end, status = 0, len(data) - 1, 200
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if wanted:
            start, end, status = int(wanted[1]), min(int(wanted[2] or len(data) - 1), len(data) - 1), 206
            if start >= len(data):
                return self._empty(416)
        self.send_response(status)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{hashlib.md5(data).hexdigest()}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start : end + 1])

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
