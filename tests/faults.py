"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an S3 server (moto): some requests get a
503 SlowDown, some a reset connection, some a delay, at rates the test sets and may change while it
runs. Every loop is bounded: a connection serves at most MAX_REQUESTS requests and waits at most
TIMEOUT_S for each, the proxy at most MAX_TOTAL requests, and `close()` ends it."""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MAX_REQUESTS = 1000  # per connection
MAX_TOTAL = 100_000
TIMEOUT_S = 30.0
SLOW_DOWN = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


def object_reads(method: str, path: str) -> bool:
    """GET of an object (not a listing): the reads of a job's inputs."""
    parts = urlsplit(path)
    return method == "GET" and parts.path.count("/") >= 2 and "list-type" not in parts.query


class FaultProxy:
    """`url` forwards to `upstream`; requests that `applies` to get a 503 with probability `slow_down`,
    a reset with `reset`, a `delay_s` wait with `delay` (one draw each, in that order)."""

    def __init__(self, upstream: str, slow_down: float = 0.0, reset: float = 0.0, delay: float = 0.0, delay_s: float = 5.0,
                 applies: Callable[[str, str], bool] = lambda method, path: True, seed: int = 0) -> None:
        self.upstream = urlsplit(upstream)
        self.slow_down, self.reset, self.delay, self.delay_s, self.applies = slow_down, reset, delay, delay_s, applies
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter = Counter()  # requests, and each fault injected
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = TIMEOUT_S

            def handle(self) -> None:
                for _ in range(MAX_REQUESTS):
                    try:
                        self.handle_one_request()
                    except (OSError, ValueError):  # the client went away, or this proxy reset the connection
                        return
                    if self.close_connection:
                        return

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                proxy.serve(self)

            do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def set(self, slow_down: float = 0.0, reset: float = 0.0, delay: float = 0.0) -> None:
        self.slow_down, self.reset, self.delay = slow_down, reset, delay

    def draw(self, method: str, path: str) -> str | None:
        with self.lock:
            self.counts["requests"] += 1
            if self.counts["requests"] > MAX_TOTAL:
                return "reset"
            if not self.applies(method, path):
                return None
            for fault, rate in (("slow_down", self.slow_down), ("reset", self.reset), ("delay", self.delay)):
                if self.random.random() < rate:
                    self.counts[fault] += 1
                    return fault
        return None

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        fault = self.draw(handler.command, handler.path)
        if fault == "reset":
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.connection.close()
            handler.close_connection = True
            return
        if fault == "slow_down":
            self.respond(handler, 503, [("Content-Type", "application/xml")], SLOW_DOWN)
            return
        if fault == "delay":
            threading.Event().wait(self.delay_s)
        upstream = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=TIMEOUT_S)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_HEADERS}
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self.respond(handler, response.status, [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_HEADERS | {"content-length"}],
                         data, head=handler.command == "HEAD", length=response.getheader("Content-Length"))
        finally:
            upstream.close()

    @staticmethod
    def respond(handler: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], data: bytes, head: bool = False,
                length: str | None = None) -> None:
        handler.send_response(status)
        for k, v in headers:
            handler.send_header(k, v)
        handler.send_header("Content-Length", length if head and length is not None else str(len(data)))
        handler.end_headers()
        if not head:
            handler.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
