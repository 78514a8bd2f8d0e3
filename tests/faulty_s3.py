"""A fault-injecting HTTP proxy on loopback between batchline and moto's S3.

Every request is forwarded to moto unless a fault is drawn for it: throttling
(503 SlowDown), a server error (500 InternalError), a reset connection (the
socket is closed with no response), or a stall (the response is held back
for a while, then sent). Faults can be limited to keys matching a pattern
(the manifest, logs, a stage's outputs) and to a time window, so a test can
say "8 s of 503s on log uploads". The proxy is bounded: it stops itself after
`max_seconds` and answers at most `max_requests` requests, and it only ever
talks to the loopback address it was given.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

FAULTS = ("throttle", "error", "reset", "stall")
_BODIES = {
    "throttle": (503, b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                      b"<Message>Please reduce your request rate.</Message></Error>"),
    "error": (500, b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code>"
                   b"<Message>We encountered an internal error.</Message></Error>"),
}


@dataclass
class Rule:
    """Which requests may fail, how often, how, and when."""

    rate: float = 0.0  # probability that a matching request fails
    faults: tuple[str, ...] = FAULTS
    path: str = ""  # regex on the request path (bucket/key); "" matches all
    methods: tuple[str, ...] = ()  # e.g. ("PUT",); empty: all
    start: float = 0.0  # seconds after `arm()` when faults begin
    stop: float = float("inf")  # ... and end
    stall_seconds: float = 3.0
    # count start/stop from the first matching request rather than from arm(): "8 s of
    # 503s on log uploads" then means 8 s of them however long the run takes to get there
    from_first_match: bool = False
    first_match: float | None = None

    def applies(self, method: str, path: str, since: float, now: float) -> bool:
        if (self.methods and method not in self.methods) or \
                (self.path and re.search(self.path, path) is None):
            return False
        if self.from_first_match:
            if self.first_match is None:
                self.first_match = now
            since = now - self.first_match
        return self.start <= since < self.stop


@dataclass
class Counts:
    requests: int = 0
    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULTS, 0))


class FaultyS3:
    """The proxy: `url` is the endpoint to give clients; `rules` may change at any time."""

    def __init__(self, upstream: str, seed: int = 0, max_seconds: float = 900,
                 max_requests: int = 200_000) -> None:
        target = urlparse(upstream)
        if target.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError("the fault proxy only forwards to loopback")
        self.upstream = (target.hostname, target.port or 80)
        self.rules: list[Rule] = []
        self.counts = Counts()
        self.random = random.Random(seed)
        self.max_requests = max_requests
        self._armed = time.monotonic()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._deadline = threading.Timer(max_seconds, self.close)
        self._deadline.daemon = True

    def __enter__(self) -> FaultyS3:
        self._thread.start()
        self._deadline.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._deadline.cancel()
        self._server.shutdown()
        self._server.server_close()

    def arm(self, *rules: Rule) -> None:
        """Replace the rules; their time windows count from now."""
        with self._lock:
            self.rules = list(rules)
            self._armed = time.monotonic()

    def _draw(self, method: str, path: str) -> tuple[str, Rule] | None:
        with self._lock:
            self.counts.requests += 1
            now = time.monotonic()
            since = now - self._armed
            for rule in self.rules:
                if rule.applies(method, path, since, now) and self.random.random() < rule.rate:
                    fault = self.random.choice(rule.faults)
                    self.counts.faults[fault] += 1
                    return fault, rule
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _relay(self) -> None:
                if proxy.counts.requests >= proxy.max_requests:
                    self.send_error(503, "fault proxy request budget used up")
                    return
                body = self._body()
                drawn = proxy._draw(self.command, urlparse(self.path).path)
                if drawn is not None:
                    fault, rule = drawn
                    if fault == "reset":
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        self.close_connection = True
                        self.connection.close()
                        return
                    if fault in _BODIES:
                        status, text = _BODIES[fault]
                        self.send_response(status)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(text)))
                        self.end_headers()
                        if self.command != "HEAD":
                            self.wfile.write(text)
                        return
                    time.sleep(rule.stall_seconds)  # "stall": slow, then answered
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("connection", "proxy-connection",
                                                    "transfer-encoding", "expect")}
                    headers["Content-Length"] = str(len(body))
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status, response.reason)
                    head = self.command == "HEAD"  # keeps the object's size
                    for key, value in response.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection") and (
                                head or key.lower() != "content-length"):
                            self.send_header(key, value)
                    if not head:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler
