"""Short-lived flow records in the key-value store: login challenges, password resets,
phone recoveries and face unlocks.

A flow carries its own deadline (checked against the clock; the store's TTL is only
garbage collection), is changed by compare-and-set, and is consumed once: of two
completions racing, one gets the record and the other TICKET_INVALID. Personal numbers
never go in: phones appear as blind indexes, names masked.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from etax_platform.clock import Clock, from_millis, to_millis
from etax_platform.errors import DomainError, Reason
from etax_platform.kv import KeyValueStore
from services.auth.domain import require_id

_ID_BYTES = 16


@dataclass(frozen=True)
class Flow:
    flow_id: str
    expires_at: datetime
    person_id: str = ""
    province: str = ""
    entry: int = 0
    # Authentication methods passed so far (amr values).
    methods: tuple[str, ...] = ()
    masked_name: str = ""
    real_name_level: int = 0
    masked_account: str = ""
    # etax.binding.v1.Identity (login step 1 decided it) or Target (decided after the face
    # check of a subject face login), serialized, base64.
    identity: str = ""
    target: str = ""
    # The code sent for this flow and the blind index of the phone (or, B6, the email) it
    # went to.
    verification_id: str = ""
    recipient_index: str = ""
    face_ticket_id: str = ""
    # Forgot password: the proof already passed ("sms" or "face"), so a retry after a
    # later failure does not need another one.
    proven_by: str = ""

    def is_live(self, now: datetime) -> bool:
        return now < self.expires_at

    def to_bytes(self) -> bytes:
        body = asdict(self)
        body["expires_at"] = to_millis(self.expires_at)
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> Flow:
        body = json.loads(raw)
        body["expires_at"] = from_millis(body["expires_at"])
        body["methods"] = tuple(body["methods"])
        return Flow(**body)


class Flows:
    """One kind of flow (its key prefix, its lifetime, its id field name in requests)."""

    def __init__(
        self, store: KeyValueStore, clock: Clock, kind: str, ttl: timedelta, id_field: str
    ) -> None:
        self._store = store
        self._clock = clock
        self._kind = kind
        self.ttl = ttl
        self._id_field = id_field

    def _key(self, flow_id: str) -> str:
        return f"auth:{self._kind}:{flow_id}"

    @property
    def _store_ttl(self) -> timedelta:
        return self.ttl + timedelta(minutes=1)

    def invalid(self) -> DomainError:
        return DomainError(
            Reason.TICKET_INVALID,
            "本次操作已失效，请重新开始",
            {"field": self._id_field},
        )

    def create(self, **fields: Any) -> Flow:
        flow = Flow(
            flow_id=secrets.token_hex(_ID_BYTES),
            expires_at=self._clock.now() + self.ttl,
            **fields,
        )
        if self._store.create(self._key(flow.flow_id), flow.to_bytes(), self._store_ttl) is None:
            raise RuntimeError("flow id collision")  # 128 random bits
        return flow

    def load(self, flow_id: str) -> Flow:
        require_id(flow_id, self._id_field)
        found = self._store.get(self._key(flow_id))
        if found is None:
            raise self.invalid()
        flow = Flow.from_bytes(found.value)
        if not flow.is_live(self._clock.now()):
            raise self.invalid()
        return flow

    def update(self, flow_id: str, change: Callable[[Flow], Flow]) -> Flow:
        now = self._clock.now()

        def apply(raw: bytes | None) -> tuple[bytes | None, Flow | None]:
            if raw is None:
                return None, None
            current = Flow.from_bytes(raw)
            if not current.is_live(now):
                return raw, None
            updated = change(current)
            return updated.to_bytes(), updated

        updated = self._store.update(self._key(flow_id), apply, self._store_ttl)
        if updated is None:
            raise self.invalid()
        return updated

    def set(self, flow_id: str, **changes: Any) -> Flow:
        return self.update(flow_id, lambda flow: replace(flow, **changes))

    def consume(self, flow_id: str) -> Flow:
        """Takes the flow out of the store: exactly one caller gets it."""
        now = self._clock.now()

        def take(raw: bytes | None) -> tuple[bytes | None, Flow | None]:
            if raw is None:
                return None, None
            current = Flow.from_bytes(raw)
            return None, (current if current.is_live(now) else None)

        taken = self._store.update(self._key(flow_id), take, self._store_ttl)
        if taken is None:
            raise self.invalid()
        return taken
