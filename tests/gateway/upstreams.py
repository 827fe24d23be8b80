"""Small real gRPC servers behind the gateway under test.

The four services are being written in parallel, so the gateway tests put test doubles
of their protobuf contracts behind Envoy: real `GrpcHost` servers (health, reflection,
the error mapping) with canned answers, recording what reached them (metadata and
requests) so a test can see what the gateway forwarded and what it stripped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.binding.v1 import binding_pb2, binding_pb2_grpc
from etax.common.v1 import types_pb2
from etax.face.v1 import face_pb2, face_pb2_grpc
from etax.sms.v1 import sms_pb2, sms_pb2_grpc
from google.protobuf import timestamp_pb2

from etax_platform.errors import DomainError, Reason
from etax_platform.pii import mask_phone
from etax_platform.server import GrpcHost, Registration
from tests.harness.sessions import trusting_authenticator

# SendCode to this phone is refused as the SMS service refuses the 6th send (E2).
THROTTLED_PHONE = "13900000006"


@dataclass
class Recorder:
    """What reached the upstream: (method, metadata, request) per call."""

    calls: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, context: grpc.ServicerContext, request: Any) -> dict[str, str]:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        with self.lock:
            self.calls.append((method, metadata, request))
        return metadata

    def last(self, method: str) -> tuple[dict[str, str], Any]:
        with self.lock:
            for name, metadata, request in reversed(self.calls):
                if name == method:
                    return metadata, request
        raise AssertionError(f"{method} never reached the upstream")

    def count(self, method: str) -> int:
        with self.lock:
            return sum(1 for name, _, _ in self.calls if name == method)


def _ts(seconds: int = 1_800_000_000) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


class _Auth(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, recorder: Recorder, keys: list[dict[str, str]]) -> None:
        self.recorder = recorder
        self.keys = keys

    def GetPublicKeys(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.recorder.record("GetPublicKeys", context, request)
        return auth_pb2.GetPublicKeysResponse(
            keys=[auth_pb2.JsonWebKey(**key) for key in self.keys]
        )

    def StartLogin(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.recorder.record("StartLogin", context, request)
        return auth_pb2.StartLoginResponse(
            challenge_id="challenge-1",
            second_steps=[auth_pb2.SECOND_STEP_SMS_CODE],
            masked_phone="138****5678",
            expires_at=_ts(),
        )

    def CompleteLoginWithCode(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.recorder.record("CompleteLoginWithCode", context, request)
        return auth_pb2.CompleteLoginWithCodeResponse(
            session=auth_pb2.Session(session_id="s-1", access_token="a", refresh_token="r")
        )

    def RefreshSession(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.recorder.record("RefreshSession", context, request)
        return auth_pb2.RefreshSessionResponse(
            session=auth_pb2.Session(session_id="s-1", refresh_token=request.refresh_token + "'")
        )

    def Logout(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.recorder.record("Logout", context, request)
        return auth_pb2.LogoutResponse()


class _Account(auth_pb2_grpc.AccountServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def StartRegistration(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.recorder.record("StartRegistration", context, request)
        return auth_pb2.StartRegistrationResponse(registration_id="reg-1", face_required=True)

    def GetProfile(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Answers with what the gateway told it: the person from the verified token
        (x-etax-person-id) and the gateway's province (x-etax-province)."""
        metadata = self.recorder.record("GetProfile", context, request)
        return auth_pb2.GetProfileResponse(
            profile=auth_pb2.Profile(
                person_id=metadata.get("x-etax-person-id", ""),
                masked_name="张*三",
                real_name_level=4,
                registered_province=metadata.get("x-etax-province", ""),
            )
        )


class _InternalAuth(auth_pb2_grpc.InternalAuthServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def ResolvePerson(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.recorder.record("ResolvePerson", context, request)
        return auth_pb2.ResolvePersonResponse(registered=True, person_id="p-resolved")


class _Sms(sms_pb2_grpc.SmsServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def SendCode(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.recorder.record("SendCode", context, request)
        if request.phone == THROTTLED_PHONE:
            raise DomainError(Reason.SMS_RATE_LIMITED, retry_after=timedelta(seconds=300))
        return sms_pb2.SendCodeResponse(
            verification_id=f"v-{self.recorder.count('SendCode')}",
            masked_recipient=mask_phone(request.phone),
            expires_at=_ts(),
            sends_left_in_window=4,
        )


class _InternalSms(sms_pb2_grpc.InternalSmsServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def VerifyCode(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.recorder.record("VerifyCode", context, request)
        return sms_pb2.VerifyCodeResponse(
            channel=sms_pb2.CHANNEL_SMS, recipient="13812345678", purpose=request.purpose
        )


class _Outbox(sms_pb2_grpc.SmsOutboxServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def ListMessages(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.recorder.record("ListMessages", context, request)
        return sms_pb2.ListMessagesResponse(
            messages=[sms_pb2.OutboxMessage(recipient=request.recipient, code="123456")]
        )


class _Binding(binding_pb2_grpc.BindingServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def ListMyIdentities(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.recorder.record("ListMyIdentities", context, request)
        return binding_pb2.ListMyIdentitiesResponse(
            identities=[
                binding_pb2.Identity(
                    entry=types_pb2.ENTRY_ENTERPRISE,
                    enterprise_code="91370100MA3C8XXXXX",
                    role=types_pb2.ROLE_TAX_OFFICER,
                )
            ]
        )


class _InternalBinding(binding_pb2_grpc.InternalBindingServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def CheckAccess(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.recorder.record("CheckAccess", context, request)
        return binding_pb2.CheckAccessResponse(
            identity=binding_pb2.Identity(
                entry=request.target.entry, enterprise_code=request.target.enterprise_code
            )
        )


class _Face(face_pb2_grpc.FaceServiceServicer):
    """WatchTicket streams `watch_updates` states, `watch_interval` seconds apart."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.watch_updates = 3
        self.watch_interval = 0.0
        self.get_ticket_delay = 0.0

    def GetTicket(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.recorder.record("GetTicket", context, request)
        threading.Event().wait(self.get_ticket_delay)
        return face_pb2.GetTicketResponse(
            ticket=face_pb2.Ticket(ticket_id=request.ticket_id, state=face_pb2.TICKET_STATE_CREATED)
        )

    def WatchTicket(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self.recorder.record("WatchTicket", context, request)
        states = [face_pb2.TICKET_STATE_CREATED, face_pb2.TICKET_STATE_SCANNED]
        for number in range(self.watch_updates):
            if number:
                threading.Event().wait(self.watch_interval)
            last = number == self.watch_updates - 1
            yield face_pb2.WatchTicketResponse(
                ticket=face_pb2.Ticket(
                    ticket_id=request.ticket_id,
                    state=face_pb2.TICKET_STATE_PASSED if last else states[min(number, 1)],
                    attempts_left=number,
                )
            )

    def SubmitCapture(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.recorder.record("SubmitCapture", context, request)
        # The size that arrived, so a test sees the whole capture went through.
        return face_pb2.SubmitCaptureResponse(
            ticket=face_pb2.Ticket(ticket_id=request.ticket_id, proof=str(len(request.capture)))
        )


@dataclass
class Upstreams:
    """The four fake services, each a real GrpcHost on a free port."""

    recorder: Recorder
    hosts: dict[str, GrpcHost]
    face: _Face
    auth: _Auth

    @property
    def addresses(self) -> dict[str, str]:
        return {name: host.address for name, host in self.hosts.items()}

    def stop(self) -> None:
        for host in self.hosts.values():
            host.stop(grace=0)


def _registration(service: str, add: Any, servicer: Any) -> Registration:
    return Registration(service, lambda server: add(servicer, server))


def start_upstreams(keys: list[dict[str, str]]) -> Upstreams:
    """Starts fake auth, binding, sms and face; auth publishes `keys` as its JWKS."""
    recorder = Recorder()
    auth = _Auth(recorder, keys)
    face = _Face(recorder)
    hosts = {
        "auth": GrpcHost(
            [
                _registration(
                    "etax.auth.v1.AuthService",
                    auth_pb2_grpc.add_AuthServiceServicer_to_server,
                    auth,
                ),
                _registration(
                    "etax.auth.v1.AccountService",
                    auth_pb2_grpc.add_AccountServiceServicer_to_server,
                    _Account(recorder),
                ),
                _registration(
                    "etax.auth.v1.InternalAuthService",
                    auth_pb2_grpc.add_InternalAuthServiceServicer_to_server,
                    _InternalAuth(recorder),
                ),
            ],
            authenticator=trusting_authenticator(),
        ),
        "binding": GrpcHost(
            [
                _registration(
                    "etax.binding.v1.BindingService",
                    binding_pb2_grpc.add_BindingServiceServicer_to_server,
                    _Binding(recorder),
                ),
                _registration(
                    "etax.binding.v1.InternalBindingService",
                    binding_pb2_grpc.add_InternalBindingServiceServicer_to_server,
                    _InternalBinding(recorder),
                ),
            ],
            authenticator=trusting_authenticator(),
        ),
        "sms": GrpcHost(
            [
                _registration(
                    "etax.sms.v1.SmsService",
                    sms_pb2_grpc.add_SmsServiceServicer_to_server,
                    _Sms(recorder),
                ),
                _registration(
                    "etax.sms.v1.InternalSmsService",
                    sms_pb2_grpc.add_InternalSmsServiceServicer_to_server,
                    _InternalSms(recorder),
                ),
                _registration(
                    "etax.sms.v1.SmsOutboxService",
                    sms_pb2_grpc.add_SmsOutboxServiceServicer_to_server,
                    _Outbox(recorder),
                ),
            ]
        ),
        "face": GrpcHost(
            [
                _registration(
                    "etax.face.v1.FaceService",
                    face_pb2_grpc.add_FaceServiceServicer_to_server,
                    face,
                )
            ]
        ),
    }
    for host in hosts.values():
        host.start()
    return Upstreams(recorder, hosts, face, auth)
