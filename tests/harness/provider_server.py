"""A provider on loopback (the real-name authority, any signed JSON provider) that can be told
to be slow, busy, wrong or down, and counts what it receives."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    signature_ok: bool


@dataclass
class FakeProvider:
    """Behaviours are consumed one per request; the last one repeats.

    "ok" answers `reply`; "slow" holds the request until released (or 10 s); "busy" is
    503, "throttled" 429 (both with `retry_after` if set); "malformed" is not JSON;
    "unexpected" is JSON without the expected fields; "error" is 500; "refused" is 400.
    """

    key: bytes
    reply: dict[str, Any] = field(default_factory=lambda: {"result": "pass"})
    script: list[str] = field(default_factory=lambda: ["ok"])
    retry_after: str | None = None
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_behaviour(self) -> str:
        with self.lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def expect(self, *script: str, reply: dict[str, Any] | None = None) -> None:
        with self.lock:
            self.script = list(script)
            if reply is not None:
                self.reply = reply

    @property
    def requests(self) -> int:
        with self.lock:
            return len(self.seen)


def _signature_ok(key: bytes, path: str, headers: Any, raw: bytes) -> bool:
    timestamp = headers.get("x-etax-timestamp", "")
    nonce = headers.get("x-etax-nonce", "")
    text = f"POST\n{path}\n{timestamp}\n{nonce}\n{hashlib.sha256(raw).hexdigest()}"
    expected = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    return bool(timestamp and nonce) and hmac.compare_digest(
        expected, headers.get("x-etax-signature", "")
    )


def _handler(fake: FakeProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            # The signature covers the path without the query.
            ok = _signature_ok(fake.key, self.path.partition("?")[0], self.headers, raw)
            with fake.lock:
                fake.seen.append(
                    Seen(
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        json.loads(raw),
                        ok,
                    )
                )
            if not ok:
                self._send(401, b'{"error": "bad signature"}')
                return
            behaviour = fake.next_behaviour()
            retry = {"retry-after": fake.retry_after} if fake.retry_after else {}
            if behaviour == "slow":
                fake.release.wait(10)
                behaviour = "ok"
            if behaviour == "ok":
                self._send(200, json.dumps(fake.reply).encode())
            elif behaviour == "busy":
                self._send(503, b'{"error": "busy"}', retry)
            elif behaviour == "throttled":
                self._send(429, b'{"error": "slow down"}', retry)
            elif behaviour == "malformed":
                self._send(200, b'{"result": "pass"')
            elif behaviour == "unexpected":
                self._send(200, b'{"unexpected": true}')
            elif behaviour == "error":
                self._send(500, b'{"error": "boom"}')
            elif behaviour == "refused":
                self._send(400, b'{"error": "no such recipient"}')
            else:
                raise AssertionError(behaviour)

    return Handler


@contextmanager
def fake_provider(key: bytes) -> Iterator[FakeProvider]:
    fake = FakeProvider(key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
