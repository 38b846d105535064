"""A local HTTP server that receives outbound webhooks (tests of the sender)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest


class Receiver:
    """A local HTTP server that records every webhook it gets and answers 500 while ``failures`` > 0."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.failures = 0
        self.delay = 0.0  # seconds before answering (a slow endpoint)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.lock:
                    failing = receiver.failures > 0
                    receiver.failures -= int(failing)
                    if not failing:
                        receiver.received.append(({k: v for k, v in self.headers.items()}, body))
                try:
                    self.send_response(500 if failing else 200)
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:
                    pass  # the sender went away (a worker killed mid-request)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def types(self) -> list[str]:
        with self.lock:
            return [json.loads(body)["type"] for _, body in self.received]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Return a running local webhook receiver."""
    server = Receiver()
    yield server
    server.stop()


