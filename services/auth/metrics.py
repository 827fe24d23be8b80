"""The auth service's domain counters (docs/operations.md), most of them counted from the
audit trail: every event that `AuditLog` writes passes `observe` on its way, so the
counters and the audit rows tell the same story and the use cases need no second call.

Labels: entries, steps, methods, ways and outcomes are fixed words; reasons are
`Reason` codes. Nothing names a person, an account or an enterprise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from etax.common.v1 import types_pb2
from prometheus_client import Counter

if TYPE_CHECKING:
    from services.auth.audit import AuditEvent

LOGINS_STARTED = Counter(
    "etax_auth_logins_started_total",
    "Login step 1 (account and password, or the specific subject's APP face start), "
    "by entry and outcome (reason on failure).",
    ["entry", "outcome", "reason"],
)
LOGINS_COMPLETED = Counter(
    "etax_auth_logins_completed_total",
    "Logins completed or refused at their last step, by entry, step (sms_code, face, "
    "qr, legacy_password) and outcome (reason on failure).",
    ["entry", "step", "outcome", "reason"],
)
LOCKS = Counter(
    "etax_auth_locks_total",
    "E1 locks: a method locked after 5 consecutive failures in a day.",
    ["method"],
)
UNLOCKS = Counter(
    "etax_auth_unlocks_total",
    "E1 unlocks by way: face (self-unlock), password_reset, midnight (counted at the "
    "person's next attempt after the CST midnight that ended the lock).",
    ["way"],
)
REGISTRATIONS = Counter(
    "etax_auth_registrations_total",
    "Persons registered (online, B1) or imported from the old system (B3), by document "
    "kind and real-name level.",
    ["origin", "document_kind", "level"],
)
SESSIONS_ISSUED = Counter(
    "etax_auth_sessions_issued_total", "Sessions opened by a login, by entry.", ["entry"]
)
SESSIONS_REFRESHED = Counter(
    "etax_auth_sessions_refreshed_total",
    "RefreshSession calls by outcome: ok, or why the refresh token was refused "
    "(unknown, reused, expired, revoked).",
    ["outcome"],
)
SESSIONS_REVOKED = Counter(
    "etax_auth_sessions_revoked_total",
    "Sessions revoked, by why: logout, refresh_token_reused, password_reset (the "
    "person's sessions whose access tokens were still valid).",
    ["why"],
)
QR_LOGINS = Counter(
    "etax_auth_qr_logins_total",
    "QR logins (D3) by stage (created, confirmed by the APP, completed by the web page) "
    "and outcome.",
    ["stage", "outcome", "reason"],
)

_ENTRIES = {
    value.number: value.name.removeprefix("ENTRY_").lower()
    for value in types_pb2.Entry.DESCRIPTOR.values
}
_STEPS = {"sms_code": "sms_code", "face": "face", "qr": "qr"}


def entry_name(entry: int | None) -> str:
    return _ENTRIES.get(entry or 0, "unspecified")


def document_kind(document_type: int) -> str:
    """The document type's enum name in lower case, without its prefix."""
    try:
        name = types_pb2.DocumentType.Name(document_type)
    except ValueError:
        return "unknown"
    return name.removeprefix("DOCUMENT_TYPE_").lower()


def _started(event: AuditEvent) -> None:
    LOGINS_STARTED.labels(entry_name(event.entry), event.outcome, event.reason or "").inc()


def _completed(event: AuditEvent) -> None:
    step = _STEPS.get(event.method or "", "other")
    entry = entry_name(event.entry)
    LOGINS_COMPLETED.labels(entry, step, event.outcome, event.reason or "").inc()
    if step == "qr":
        QR_LOGINS.labels("completed", event.outcome, event.reason or "").inc()
    if event.outcome == "ok":
        SESSIONS_ISSUED.labels(entry).inc()


def _legacy(event: AuditEvent) -> None:
    entry = entry_name(event.entry)
    LOGINS_COMPLETED.labels(entry, "legacy_password", event.outcome, event.reason or "").inc()
    if event.outcome == "ok":
        SESSIONS_ISSUED.labels(entry).inc()


def _refresh(event: AuditEvent) -> None:
    outcome = "ok" if event.outcome == "ok" else (event.reason or "").removeprefix("refresh_token_")
    SESSIONS_REFRESHED.labels(outcome).inc()
    if event.reason == "refresh_token_reused":
        SESSIONS_REVOKED.labels("refresh_token_reused").inc()


def _revoke(event: AuditEvent) -> None:
    SESSIONS_REVOKED.labels(str(event.detail.get("why", "logout"))).inc()


def _lock(event: AuditEvent) -> None:
    LOCKS.labels(event.method or "unknown").inc()


def _unlock(event: AuditEvent) -> None:
    UNLOCKS.labels(str(event.detail.get("by", "unknown"))).inc()


def _confirm_qr(event: AuditEvent) -> None:
    QR_LOGINS.labels("confirmed", event.outcome, event.reason or "").inc()


_BY_ACTION: dict[str, Callable[[AuditEvent], None]] = {
    "login.password": _started,
    "login.complete": _completed,
    "legacy.login": _legacy,
    "session.refresh": _refresh,
    "session.revoke": _revoke,
    "lockout.lock": _lock,
    "lockout.unlock": _unlock,
    "qr.confirm": _confirm_qr,
}


def observe(event: AuditEvent) -> None:
    """Counts an audit event as it is written (or queued)."""
    count = _BY_ACTION.get(event.action)
    if count is not None:
        count(event)


def sessions_revoked(why: str, count: int) -> None:
    if count:
        SESSIONS_REVOKED.labels(why).inc(count)
