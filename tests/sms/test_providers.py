"""Delivery through providers (G1): a real HTTP provider on loopback, and failures that
record nothing as sent."""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from etax.common.v1 import types_pb2
from etax.sms.v1 import sms_pb2
from pydantic import ValidationError
from sqlalchemy import select

from etax_platform.db import Database
from etax_platform.errors import Reason, from_rpc_error
from etax_platform.outbound import request_signature
from services.sms.models import deliveries
from services.sms.providers import HttpProvider
from services.sms.settings import SmsSettings
from tests.harness.servers import free_port
from tests.sms.conftest import SmsClient

SECRET = b"provider-secret"
PHONE = "13812345678"


class FakeProvider(ThreadingHTTPServer):
    """A real HTTP server standing in for the SMS gateway; told how to behave per test."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers: list[int] = []  # status per request, then 200
        self.delay = 0.0
        self.received: list[dict[str, object]] = []
        self.signatures_ok: list[bool] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/send"


class _Handler(BaseHTTPRequestHandler):
    server: FakeProvider

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        expected = request_signature(
            SECRET, self.path, self.headers["X-Etax-Timestamp"], self.headers["X-Etax-Nonce"], body
        )
        self.server.signatures_ok.append(
            hmac.compare_digest(expected, self.headers["X-Etax-Signature"])
        )
        self.server.received.append(json.loads(body))
        time.sleep(self.server.delay)
        status = self.server.answers.pop(0) if self.server.answers else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    server = FakeProvider()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def send(sms: SmsClient) -> sms_pb2.SendCodeResponse:
    return sms.public.SendCode(
        sms_pb2.SendCodeRequest(phone=PHONE, purpose=types_pb2.VERIFICATION_PURPOSE_REGISTRATION),
        timeout=10,
    )


def test_g1_http_provider_gets_a_signed_message(start_sms: object, provider: FakeProvider) -> None:
    sms = start_sms(HttpProvider(provider.url, SECRET, timeout=2))  # type: ignore[operator]
    sent = send(sms)
    (message,) = provider.received
    assert provider.signatures_ok == [True]
    assert message["to"] == PHONE and message["channel"] == "sms"
    assert message["message_id"] == sent.verification_id
    code = str(message["text"]).split("验证码为")[1][:6]
    proven = sms.internal.VerifyCode(
        sms_pb2.VerifyCodeRequest(
            verification_id=sent.verification_id,
            code=code,
            purpose=types_pb2.VERIFICATION_PURPOSE_REGISTRATION,
        ),
        timeout=5,
    )
    assert proven.recipient == PHONE


def test_g1_http_provider_retries_server_errors(start_sms: object, provider: FakeProvider) -> None:
    provider.answers = [503, 502]
    sms = start_sms(HttpProvider(provider.url, SECRET, timeout=3, attempts=3))  # type: ignore[operator]
    send(sms)
    assert len(provider.received) == 3
    assert len({m["message_id"] for m in provider.received}) == 1


def _unavailable(sms: SmsClient) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        send(sms)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    error = from_rpc_error(caught.value)
    assert error is not None and error.reason is Reason.PROVIDER_UNAVAILABLE


def test_g1_provider_down_is_unavailable_and_uses_no_slot(start_sms: object) -> None:
    down = f"http://127.0.0.1:{free_port()}/send"
    sms = start_sms(HttpProvider(down, SECRET, timeout=1, attempts=2))  # type: ignore[operator]
    for _ in range(7):  # more than the 5 a window allows: none of them counted
        _unavailable(sms)


def test_e2_failed_send_gives_its_slot_back(start_sms: object, provider: FakeProvider) -> None:
    sms = start_sms(HttpProvider(provider.url, SECRET, timeout=2, attempts=1))  # type: ignore[operator]
    for _ in range(4):
        send(sms)
    provider.answers = [500]
    _unavailable(sms)
    assert send(sms).sends_left_in_window == 0


def test_g1_provider_too_slow_is_unavailable(start_sms: object, provider: FakeProvider) -> None:
    provider.delay = 1.0
    sms = start_sms(HttpProvider(provider.url, SECRET, timeout=0.3, attempts=3))  # type: ignore[operator]
    _unavailable(sms)


def test_g1_provider_refusal_is_not_retried(start_sms: object, provider: FakeProvider) -> None:
    provider.answers = [400]
    sms = start_sms(HttpProvider(provider.url, SECRET, timeout=2, attempts=3))  # type: ignore[operator]
    _unavailable(sms)
    assert len(provider.received) == 1


def test_outbox_service_exists_only_when_enabled(start_sms: object) -> None:
    sms = start_sms(outbox_enabled=False)  # type: ignore[operator]
    send(sms)
    with pytest.raises(grpc.RpcError) as caught:
        sms.outbox.ListMessages(sms_pb2.ListMessagesRequest(recipient=PHONE), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_delivery_log_keeps_outcomes_without_the_number(
    start_sms: object, database_url: str, provider: FakeProvider
) -> None:
    sms = start_sms(  # type: ignore[operator]
        HttpProvider(provider.url, SECRET, timeout=2, attempts=1), database_url=database_url
    )
    send(sms)
    provider.answers = [500]
    _unavailable(sms)
    sms.host.stop(grace=0)  # the log is written in batches; stopping writes the rest
    database = Database(database_url)
    with database.reading() as session:
        rows = session.execute(select(deliveries).order_by(deliveries.c.id)).all()
    database.dispose()
    assert [r.outcome for r in rows] == ["sent", "failed"]
    assert {r.masked_recipient for r in rows} == {"138****5678"}
    assert all(PHONE not in r.recipient_index for r in rows)


def test_settings_refuse_an_incomplete_http_provider() -> None:
    with pytest.raises(ValidationError, match="ETAX_SMS_HTTP_URL"):
        SmsSettings(provider="http")
