"""The audit trail (`audit_events`): who did what, when, through which entry and province,
and how it ended.

Events are written in the transaction that already runs when there is one (a session
opened, a password reset, a phone claimed), so they commit or roll back with what they
describe. Everything else (password and code checks, locks, refusals) goes to a
background writer that inserts in batches: the hot path pays for a queue append, not a
database round trip. None of those is lost: while the database is away they wait in a
local durable journal and are written, in order and once each, when it is back
(etax_platform.batches.BatchWriter); every event carries a unique `event_id` for that.
Accounts are masked before they get here; `detail` carries codes and counts only.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from etax_platform.batches import BatchWriter
from etax_platform.clock import Clock
from etax_platform.db import Database
from etax_platform.errors import DomainError, Reason
from etax_platform.identifiers import normalize_phone
from etax_platform.observability import request_id
from etax_platform.pii import mask_document, mask_phone
from services.auth import metrics
from services.auth.models import audit_events

log = logging.getLogger("etax.auth.audit")

# Reasons that mean "a wrong credential was presented" (the attempt counted).
_WRONG_CREDENTIAL = frozenset(
    {Reason.CREDENTIALS_INVALID, Reason.CODE_INVALID, Reason.FACE_MISMATCH}
)


def mask_account(account: str) -> str:
    """A login account as it may appear in the audit trail: a phone as 138****1234,
    anything else (document number, username) as 3701**********123X. Control and format
    characters are dropped first: what a client typed must not stop the row being written
    (PostgreSQL text holds no NUL)."""
    printable = "".join(ch for ch in account if not unicodedata.category(ch).startswith("C"))
    try:
        return mask_phone(normalize_phone(printable))
    except DomainError:
        return mask_document("".join(printable.split()).upper())[:64]


@dataclass
class AuditEvent:
    action: str
    outcome: str = "ok"
    reason: str | None = None
    person_id: str | None = None
    session_id: str | None = None
    entry: int | None = None
    province: str | None = None
    method: str | None = None
    masked_account: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    # Set once the event went into a transaction that commits with it.
    written: bool = False

    def refuse(self, error: DomainError) -> None:
        if self.outcome == "ok":
            self.outcome = "failed" if error.reason in _WRONG_CREDENTIAL else "refused"
        self.reason = self.reason or error.reason.value

    def follow_up(self, action: str, **changes: Any) -> AuditEvent:
        """Another event about the same person and request (a lock caused by a failure)."""
        return AuditEvent(
            action,
            person_id=self.person_id,
            session_id=self.session_id,
            entry=self.entry,
            province=self.province,
            method=self.method,
            masked_account=self.masked_account,
            **changes,
        )


class AuditLog:
    def __init__(
        self, database: Database, clock: Clock, *, journal_dir: Path, batch_seconds: float = 0.05
    ) -> None:
        self._clock = clock
        self._writer = BatchWriter(
            database,
            audit_events,
            name="audit",
            service="auth",
            journal_dir=journal_dir,
            key="event_id",
            batch_seconds=batch_seconds,
        )

    def row(self, event: AuditEvent, at: datetime | None = None) -> dict[str, Any]:
        """The event as its row of `audit_events` (for a statement that writes it itself)."""
        rid = request_id.get()
        return {
            "event_id": os.urandom(16).hex(),
            "occurred_at": at or self._clock.now(),
            "action": event.action,
            "outcome": event.outcome,
            "reason": event.reason,
            "person_id": event.person_id,
            "session_id": event.session_id,
            "entry": event.entry,
            "province": event.province or None,
            "method": event.method,
            "masked_account": event.masked_account,
            "request_id": None if rid == "-" else rid[:128],
            "detail": json.dumps(event.detail, ensure_ascii=False, sort_keys=True)
            if event.detail
            else None,
        }

    def insert(self, session: Connection, event: AuditEvent) -> None:
        """Writes the event in the caller's transaction (and counts it: services/auth/
        metrics.py; an event whose transaction then rolls back was counted all the same)."""
        session.execute(audit_events.insert().values(**self.row(event)))
        event.written = True
        metrics.observe(event)

    def written_by_statement(self, event: AuditEvent) -> None:
        """The event's row (`row`) went in with a hot statement of the caller's: counted
        as `insert` counts it."""
        event.written = True
        metrics.observe(event)

    def record(self, event: AuditEvent) -> None:
        """Off the request path (or at once when batching is off); never lost."""
        self._writer.add(self.row(event))
        metrics.observe(event)

    @contextmanager
    def attempt(self, action: str, **fields: Any) -> Iterator[AuditEvent]:
        """An event for a use case: ok when the block ends, or the reason it failed."""
        event = AuditEvent(action, **fields)
        try:
            yield event
        except DomainError as error:
            event.refuse(error)
            self.record(event)
            raise
        except Exception:
            event.outcome = "error"
            self.record(event)
            raise
        if not event.written:
            self.record(event)

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until every recorded event is in the database; False if some still wait."""
        return self._writer.flush(timeout)

    def backlog(self) -> int:
        """Events waiting for the database (queued or journaled)."""
        return self._writer.backlog()

    def close(self) -> None:
        self._writer.close()


def loggable_code(code: str) -> str:
    """Enterprise codes as they may be logged: 17- and 20-character TINs of individual
    businesses embed a resident ID number, so those are masked."""
    return mask_document(code) if len(code) in (17, 20) else code


def detail_of(identity: Any) -> dict[str, Any]:
    """What an event says about an identity: entry, codes and role (no personal numbers)."""
    found = {
        "identity_entry": identity.entry,
        "enterprise_code": loggable_code(identity.enterprise_code),
        "role": identity.role,
        "project_number": identity.project_number,
        "agency_code": loggable_code(identity.agency_code),
        "client_code": loggable_code(identity.client_code),
    }
    return {k: v for k, v in found.items() if v}
