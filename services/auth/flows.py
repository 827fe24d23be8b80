"""Short-lived flow records in the key-value store: login challenges, password resets,
phone recoveries and face unlocks.

A flow carries its own deadline (checked against the clock; the store's TTL is only
garbage collection), is changed by compare-and-set, and is consumed once: of two
completions racing, one gets the record and the other TICKET_INVALID. Personal numbers
never go in: phones appear as blind indexes, names masked.

A flow made for a known person (a login challenge) has an id of 64 hex digits: the
person's owner tag (`owner_tag`), then 128 random bits. Its key carries the tag, as the
person's lockout record does, so one script may count an attempt and read the flow
(scripts.py); other flows have 32 random hex digits.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import orjson

from etax_platform.clock import Clock, from_millis, to_millis
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.kv import KeyValueStore, owned_key

_ID_BYTES = 16
_TAG_DIGITS = 32
_FLOW_ID = re.compile(r"[0-9a-f]{32}(?:[0-9a-f]{32})?")


def owner_tag(person_id: str) -> str:
    """The hash tag of a person's records in the store: a stable pseudonym (128 bits of
    a hash of the person id, so two persons never share one), not the id itself."""
    return hashlib.sha256(f"etax-auth-owner:{person_id}".encode()).hexdigest()[:_TAG_DIGITS]


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
        # A copy of the fields (plain values; asdict would deep-copy them), then orjson:
        # the stdlib's encoder and decoder cost a login step several times as much.
        body = dict(vars(self))
        body["expires_at"] = to_millis(self.expires_at)
        return orjson.dumps(body)

    @staticmethod
    def from_bytes(raw: bytes) -> Flow:
        body = orjson.loads(raw)
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

    def key(self, flow_id: str) -> str:
        if len(flow_id) == 2 * _TAG_DIGITS and _FLOW_ID.fullmatch(flow_id):
            # A person's: in the slot of their records.
            return owned_key(f"auth:{self._kind}", flow_id[:_TAG_DIGITS], flow_id[_TAG_DIGITS:])
        return f"auth:{self._kind}:{flow_id}"

    @staticmethod
    def tag_of(flow_id: str) -> str | None:
        """The owner tag a person's flow id carries (None: a flow of nobody known)."""
        if len(flow_id) == 2 * _TAG_DIGITS and _FLOW_ID.fullmatch(flow_id):
            return flow_id[:_TAG_DIGITS]
        return None

    def require_id(self, flow_id: str) -> str:
        if not _FLOW_ID.fullmatch(flow_id):
            raise invalid(self._id_field)
        return flow_id

    @property
    def store_ttl_ms(self) -> int:
        return int(self._store_ttl.total_seconds() * 1000)

    @property
    def _store_ttl(self) -> timedelta:
        return self.ttl + timedelta(minutes=1)

    def invalid(self) -> DomainError:
        return DomainError(
            Reason.TICKET_INVALID,
            "本次操作已失效，请重新开始",
            {"field": self._id_field},
        )

    def new(self, *, owner: str | None = None, **fields: Any) -> Flow:
        """A flow not yet stored; with `owner`, its id carries the person's owner tag."""
        flow_id = secrets.token_hex(_ID_BYTES)
        if owner is not None:
            flow_id = owner_tag(owner) + flow_id
        return Flow(flow_id=flow_id, expires_at=self._clock.now() + self.ttl, **fields)

    def create(self, *, owner: str | None = None, **fields: Any) -> Flow:
        flow = self.new(owner=owner, **fields)
        if self._store.create(self.key(flow.flow_id), flow.to_bytes(), self._store_ttl) is None:
            raise RuntimeError("flow id collision")  # 128 random bits
        return flow

    def live(self, raw: bytes | None) -> Flow | None:
        """A stored flow, if it is still live."""
        if raw is None:
            return None
        flow = Flow.from_bytes(raw)
        return flow if flow.is_live(self._clock.now()) else None

    def load(self, flow_id: str) -> Flow:
        self.require_id(flow_id)
        found = self._store.get(self.key(flow_id))
        flow = self.live(None if found is None else found.value)
        if flow is None:
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

        updated = self._store.update(self.key(flow_id), apply, self._store_ttl)
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

        taken = self._store.update(self.key(flow_id), take, self._store_ttl)
        if taken is None:
            raise self.invalid()
        return taken
