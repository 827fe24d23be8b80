"""Use cases of the SMS service: send a code (throttled, E2), verify it, read the outbox."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from etax.sms.v1 import sms_pb2

from etax_platform.clock import Clock, to_millis
from etax_platform.db import BatchWriter
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.kv import KeyValueStore
from etax_platform.pii import PersonalData
from services.sms import domain, metrics
from services.sms.domain import CodeRecord, Purpose, Recipient, SendWindow, Verified
from services.sms.providers import DeliveryFailed, Message, Outbox, Provider

log = logging.getLogger("etax.sms")

_RECIPIENT_CONTEXT = "sms.code.recipient"


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
        throttle_key = f"sms:throttle:{recipient.index_kind}:{index}"
        now = self._clock.now()
        decision = self._take_slot(throttle_key, now)
        counted = metrics.labels(purpose, recipient.channel)
        if not decision.allowed:
            log.info("send refused: %s over the limit", recipient.masked)
            metrics.THROTTLED.labels(*counted).inc()
            raise domain.rate_limited(decision)

        code = domain.new_code()
        verification_id = domain.new_verification_id()
        expires_at = now + self._policy.code_ttl
        record = CodeRecord(
            channel=recipient.channel,
            recipient_sealed=self._pii.encrypt(recipient.address, _RECIPIENT_CONTEXT),
            purpose=purpose,
            digest=self._digest(verification_id, code),
            sent_ms=to_millis(now),
            expires_ms=to_millis(expires_at),
            attempts_left=self._policy.max_attempts,
        )
        code_key = self._code_key(verification_id)
        # Garbage collection only: the record's own deadline is checked against the clock.
        self._store.create(code_key, record.encode(), self._policy.code_ttl * 2)
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
            self._store.delete(code_key)
            self._give_back_slot(throttle_key, decision.window_started_ms)
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
        return SentCode(verification_id, recipient.masked, expires_at, decision.sends_left)

    def _take_slot(self, key: str, now: datetime) -> domain.SendDecision:
        limit, length = self._policy.throttle_limit, self._policy.throttle_window

        def take(raw: bytes | None) -> tuple[bytes | None, domain.SendDecision]:
            window, decision = domain.take_send_slot(SendWindow.decode(raw), now, limit, length)
            return (window.encode() if decision.allowed else raw), decision

        return self._store.update(key, take, length * 2)

    def _give_back_slot(self, key: str, window_started_ms: int) -> None:
        def give_back(raw: bytes | None) -> tuple[bytes | None, None]:
            window = domain.give_back_send_slot(SendWindow.decode(raw), window_started_ms)
            return (None if window is None else window.encode()), None

        self._store.update(key, give_back, self._policy.throttle_window * 2)

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
        now = self._clock.now()
        digest = self._digest(verification_id, code)

        channel: list[int] = []

        def attempt(raw: bytes | None) -> tuple[bytes | None, Verified | DomainError]:
            found = CodeRecord.decode(raw)
            channel[:] = [] if found is None else [found.channel]
            record, outcome = domain.try_code(found, now, purpose, digest)
            return (None if record is None else record.encode()), outcome

        outcome = self._store.update(
            self._code_key(verification_id), attempt, self._policy.code_ttl * 2
        )
        counted = metrics.labels(purpose, channel[0] if channel else None)
        if isinstance(outcome, DomainError):
            metrics.VERIFIED.labels(*counted, outcome.reason.value).inc()
            raise outcome
        metrics.VERIFIED.labels(*counted, "ok").inc()
        record = outcome.record
        return ProvenRecipient(
            channel=record.channel,
            recipient=self._pii.decrypt(record.recipient_sealed, _RECIPIENT_CONTEXT),
            purpose=record.purpose,
            verified_at=now,
        )

    # --- helpers ----------------------------------------------------------------------

    @staticmethod
    def _code_key(verification_id: str) -> str:
        return f"sms:code:{hashlib.sha256(verification_id.encode()).hexdigest()}"

    def _digest(self, verification_id: str, code: str) -> str:
        # Keyed, so a copy of the store does not give the codes away to a 10^6 search.
        return self._pii.blind_index(f"{verification_id}:{code}", "sms-code")

    def outbox_messages(self, outbox: Outbox, recipient: Recipient) -> list[Message]:
        return outbox.messages(self._pii.blind_index(recipient.address, recipient.index_kind))
