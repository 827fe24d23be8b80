"""Use cases of the SMS service: send a code (throttled, E2), verify it, read the outbox."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from etax.sms.v1 import sms_pb2

from etax_platform.batches import BatchWriter
from etax_platform.clock import Clock, to_millis
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.kv import KeyValueStore, owned_key
from etax_platform.pii import PersonalData
from services.sms import domain, metrics
from services.sms.domain import Purpose, Recipient
from services.sms.providers import DeliveryFailed, Message, Outbox, Provider
from services.sms.scripts import GIVE_BACK, SEND, VERIFY, verified_channel, verify_outcome

log = logging.getLogger("etax.sms")

_RECIPIENT_CONTEXT = "sms.code.recipient"
# A recipient's bucket: the first hex digits of its blind index (4096 buckets).
_BUCKET_DIGITS = 3
_BUCKET = re.compile(f"[0-9a-f]{{{_BUCKET_DIGITS}}}")


def _millis(span: timedelta) -> int:
    return max(1, int(span.total_seconds() * 1000))


@dataclass(frozen=True)
class Policy:
    throttle_limit: int = 5
    throttle_window: timedelta = timedelta(minutes=10)
    code_ttl: timedelta = timedelta(minutes=5)
    max_attempts: int = 5


@dataclass(frozen=True)
class SentCode:
    verification_id: str
    masked_recipient: str
    expires_at: datetime
    sends_left: int


@dataclass(frozen=True)
class ProvenRecipient:
    channel: sms_pb2.Channel
    recipient: str
    purpose: Purpose
    verified_at: datetime


class CodeService:
    def __init__(
        self,
        *,
        store: KeyValueStore,
        provider: Provider,
        personal_data: PersonalData,
        clock: Clock,
        deliveries: BatchWriter,
        policy: Policy | None = None,
    ) -> None:
        self._store = store
        self._provider = provider
        self._pii = personal_data
        self._clock = clock
        self._deliveries = deliveries
        self._policy = policy or Policy()

    # --- sending ----------------------------------------------------------------------

    def send(self, recipient: Recipient, purpose: Purpose, *, public: bool) -> SentCode:
        domain.check_purpose(purpose, public=public)
        index = self._pii.blind_index(recipient.address, recipient.index_kind)
        # The throttle and the code are records of the recipient's bucket (one Redis Cluster
        # slot, so one script takes the slot and stores the code); the verification id
        # carries the bucket, so VerifyCode finds the code from the id alone.
        bucket = index[:_BUCKET_DIGITS]
        throttle_key = owned_key("sms:throttle", bucket, recipient.index_kind, index)
        now = self._clock.now()
        code = domain.new_code()
        verification_id = f"{bucket}.{domain.new_verification_id()}"
        expires_at = now + self._policy.code_ttl
        code_key = self._code_key(verification_id)
        assert code_key is not None  # the id names its bucket
        limit, window = self._policy.throttle_limit, self._policy.throttle_window
        allowed, started_ms, sends_left, retry_after_ms = self._store.run(
            SEND,
            [throttle_key, code_key],
            [
                to_millis(now),
                limit,
                _millis(window),
                # Garbage collection only: records carry their own deadlines.
                _millis(window * 2),
                _millis(self._policy.code_ttl * 2),
                int(recipient.channel),
                self._pii.encrypt(recipient.address, _RECIPIENT_CONTEXT),
                int(purpose),
                self._digest(verification_id, code),
                to_millis(expires_at),
                self._policy.max_attempts,
            ],
        )
        counted = metrics.labels(purpose, recipient.channel)
        if not allowed:
            log.info("send refused: %s over the limit", recipient.masked)
            metrics.THROTTLED.labels(*counted).inc()
            raise domain.rate_limited(
                domain.SendDecision(False, started_ms, 0, timedelta(milliseconds=retry_after_ms))
            )
        message = Message(
            message_id=verification_id,
            channel="email" if recipient.channel == sms_pb2.CHANNEL_EMAIL else "sms",
            recipient=recipient.address,
            recipient_index=index,
            purpose=purpose,
            code=code,
            text=domain.message_text(code, purpose, self._policy.code_ttl),
            sent_ms=to_millis(now),
        )
        try:
            self._provider.deliver(message)
        except DeliveryFailed as failure:
            self._store.run(GIVE_BACK, [throttle_key, code_key], [started_ms])
            self._log_delivery(recipient, index, purpose, "failed", now)
            metrics.DELIVERY_FAILED.labels(*counted).inc()
            log.warning("delivery to %s failed: %s", recipient.masked, failure)
            raise DomainError(
                Reason.PROVIDER_UNAVAILABLE,
                "短信服务暂时不可用，请稍后重试",
                {"dependency": f"{self._provider.name}-provider"},
            ) from None
        self._log_delivery(recipient, index, purpose, "sent", now)
        metrics.SENT.labels(*counted).inc()
        log.debug("code sent to %s", recipient.masked)
        return SentCode(verification_id, recipient.masked, expires_at, sends_left)

    def _log_delivery(
        self, recipient: Recipient, index: str, purpose: Purpose, outcome: str, now: datetime
    ) -> None:
        """Off the request path, never lost (journaled while the database is away)."""
        self._deliveries.add(
            {
                "channel": recipient.index_kind,
                "recipient_index": index,
                "masked_recipient": recipient.masked,
                "purpose": purpose,
                "provider": self._provider.name,
                "outcome": outcome,
                "created_at": now,
            }
        )

    # --- verifying --------------------------------------------------------------------

    def verify(self, verification_id: str, code: str, purpose: Purpose) -> ProvenRecipient:
        if not verification_id or len(verification_id) > 64:
            raise invalid("verification_id")
        if len(code) != domain.CODE_DIGITS or not code.isascii() or not code.isdigit():
            raise invalid("code", Reason.CODE_INVALID, "请输入6位数字验证码")
        domain.check_purpose(purpose, public=False)
        key = self._code_key(verification_id)
        if key is None:  # not an id this service gave out
            metrics.VERIFIED.labels(*metrics.labels(purpose, None), "CODE_EXPIRED").inc()
            raise DomainError(Reason.CODE_EXPIRED)
        now = self._clock.now()
        # One step: counts the attempt, consumes the code if it is right (single use).
        reply = self._store.run(
            VERIFY, [key], [to_millis(now), self._digest(verification_id, code), int(purpose)]
        )
        outcome = verify_outcome(reply)
        counted = metrics.labels(purpose, verified_channel(reply))
        if isinstance(outcome, DomainError):
            metrics.VERIFIED.labels(*counted, outcome.reason.value).inc()
            raise outcome
        metrics.VERIFIED.labels(*counted, "ok").inc()
        channel, sealed, proven_purpose = outcome
        return ProvenRecipient(
            channel=cast(sms_pb2.Channel, channel),
            recipient=self._pii.decrypt(sealed, _RECIPIENT_CONTEXT),
            purpose=cast(Purpose, proven_purpose),
            verified_at=now,
        )

    # --- helpers ----------------------------------------------------------------------

    @staticmethod
    def _code_key(verification_id: str) -> str | None:
        """The code's key, in the slot of the bucket its id names; None: no such id."""
        bucket, dot, _rest = verification_id.partition(".")
        if not dot or not _BUCKET.fullmatch(bucket):
            return None
        digest = hashlib.sha256(verification_id.encode()).hexdigest()
        return owned_key("sms:code", bucket, digest)

    def _digest(self, verification_id: str, code: str) -> str:
        # Keyed, so a copy of the store does not give the codes away to a 10^6 search.
        return self._pii.blind_index(f"{verification_id}:{code}", "sms-code")

    def outbox_messages(self, outbox: Outbox, recipient: Recipient) -> list[Message]:
        return outbox.messages(self._pii.blind_index(recipient.address, recipient.index_kind))
