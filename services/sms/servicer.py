"""gRPC servicers of etax.sms.v1: convert and delegate, nothing else."""

from __future__ import annotations

from typing import TypeVar

import grpc
from etax.sms.v1 import sms_pb2, sms_pb2_grpc

from etax_platform.clock import from_millis, to_timestamp
from services.sms.domain import Recipient
from services.sms.providers import Outbox
from services.sms.service import CodeService, SentCode


def _recipient(request: sms_pb2.SendCodeRequest | sms_pb2.SendAccountCodeRequest) -> Recipient:
    return Recipient.parse(request.phone, request.email)


_Sent = TypeVar("_Sent", sms_pb2.SendCodeResponse, sms_pb2.SendAccountCodeResponse)


def _fill(response: _Sent, sent: SentCode) -> _Sent:
    response.verification_id = sent.verification_id
    response.masked_recipient = sent.masked_recipient
    response.expires_at.CopyFrom(to_timestamp(sent.expires_at))
    response.sends_left_in_window = sent.sends_left
    return response


class SmsServicer(sms_pb2_grpc.SmsServiceServicer):  # type: ignore[misc]
    def __init__(self, codes: CodeService) -> None:
        self._codes = codes

    def SendCode(
        self, request: sms_pb2.SendCodeRequest, context: grpc.ServicerContext
    ) -> sms_pb2.SendCodeResponse:
        sent = self._codes.send(_recipient(request), request.purpose, public=True)
        return _fill(sms_pb2.SendCodeResponse(), sent)


class InternalSmsServicer(sms_pb2_grpc.InternalSmsServiceServicer):  # type: ignore[misc]
    def __init__(self, codes: CodeService) -> None:
        self._codes = codes

    def SendAccountCode(
        self, request: sms_pb2.SendAccountCodeRequest, context: grpc.ServicerContext
    ) -> sms_pb2.SendAccountCodeResponse:
        sent = self._codes.send(_recipient(request), request.purpose, public=False)
        return _fill(sms_pb2.SendAccountCodeResponse(), sent)

    def VerifyCode(
        self, request: sms_pb2.VerifyCodeRequest, context: grpc.ServicerContext
    ) -> sms_pb2.VerifyCodeResponse:
        proven = self._codes.verify(request.verification_id, request.code, request.purpose)
        return sms_pb2.VerifyCodeResponse(
            channel=proven.channel,
            recipient=proven.recipient,
            purpose=proven.purpose,
            verified_at=to_timestamp(proven.verified_at),
        )


class OutboxServicer(sms_pb2_grpc.SmsOutboxServiceServicer):  # type: ignore[misc]
    def __init__(self, codes: CodeService, outbox: Outbox) -> None:
        self._codes = codes
        self._outbox = outbox

    def ListMessages(
        self, request: sms_pb2.ListMessagesRequest, context: grpc.ServicerContext
    ) -> sms_pb2.ListMessagesResponse:
        is_email = "@" in request.recipient
        recipient = Recipient.parse(
            "" if is_email else request.recipient, request.recipient if is_email else ""
        )
        return sms_pb2.ListMessagesResponse(
            messages=[
                sms_pb2.OutboxMessage(
                    recipient=m.recipient,
                    channel=sms_pb2.CHANNEL_EMAIL if m.channel == "email" else sms_pb2.CHANNEL_SMS,
                    purpose=m.purpose,
                    code=m.code,
                    text=m.text,
                    sent_at=to_timestamp(from_millis(m.sent_ms)),
                    verification_id=m.message_id,
                )
                for m in self._codes.outbox_messages(self._outbox, recipient)
            ]
        )
