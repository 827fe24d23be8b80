"""Global revocation: every service refuses a revoked session's access token within a
second (DESIGN.md, Security).

Auth's database is the system of record of revocations (`sessions.revoked_at`: logout,
password reset, a reused refresh token). Every process keeps the set of sessions revoked
recently in memory and refreshes it in the background, every `poll_seconds`, by asking
for the revocations since its last answer: auth reads its own table, the other services
call `InternalAuthService.ListRevokedSessions`. A check is then a set lookup, with no store
round trip on the request path; a restart of Redis cannot lose a revocation, and a logout
is one database transaction (all or nothing).

A process that cannot refresh its set for `stale_after_seconds` fails closed: session
checks answer UNAVAILABLE until it can, rather than accept a token that may be revoked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from etax_platform import metrics
from etax_platform.errors import DomainError, Reason

log = logging.getLogger("etax.revocation")

# Commits can land in another order than their timestamps: each request reaches back this
# far before the previous answer, and ids seen twice are kept once.
_OVERLAP = timedelta(seconds=10)


@dataclass(frozen=True)
class Revocations:
    """One answer of the feed."""

    session_ids: Sequence[str]
    # The feed's own time when it read them: the next request asks from a little before.
    as_of: datetime
    # How long an access token of a revoked session can still be presented.
    retain_for: timedelta


Fetch = Callable[[datetime | None], Revocations]


class RevocationList:
    def __init__(
        self,
        fetch: Fetch,
        *,
        poll_seconds: float = 0.25,
        stale_after_seconds: float = 5.0,
        name: str = "revocations",
    ) -> None:
        self._fetch = fetch
        self._poll = poll_seconds
        self._stale_after = stale_after_seconds
        # session id -> monotonic time until which it is kept
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()
        self._since: datetime | None = None
        self._refreshed_at = float("-inf")
        self._first = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        metrics.watch_value(metrics.REVOCATION_AGE, (name,), self, RevocationList.age)

    def age(self) -> float:
        """Seconds since the last refresh (NaN before the feed was started)."""
        if not self._started:
            return float("nan")
        return time.monotonic() - self._refreshed_at

    def start(self) -> RevocationList:
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        if self._started:
            self._thread.join(timeout=5)

    def add(self, session_ids: Iterable[str], retain_for: timedelta) -> None:
        """Revocations this process made itself: known at once, before the next refresh."""
        until = time.monotonic() + retain_for.total_seconds()
        with self._lock:
            for session_id in session_ids:
                self._revoked[session_id] = until

    def is_revoked(self, session_id: str) -> bool:
        """Whether the session was revoked; UNAVAILABLE while the set may be out of date."""
        if not self._first.is_set():
            self.start()
            self._first.wait(self._stale_after)
        if time.monotonic() - self._refreshed_at > self._stale_after:
            raise DomainError(Reason.PROVIDER_UNAVAILABLE, metadata={"dependency": "revocations"})
        return session_id in self._revoked

    def refresh(self) -> None:
        """One round of the feed (the background thread calls it every poll)."""
        answer = self._fetch(self._since)
        now = time.monotonic()
        until = now + answer.retain_for.total_seconds()
        with self._lock:
            for session_id in answer.session_ids:
                self._revoked.setdefault(session_id, until)
            expired = [sid for sid, keep in self._revoked.items() if keep < now]
            for session_id in expired:
                del self._revoked[session_id]
        self._since = answer.as_of - _OVERLAP
        self._refreshed_at = now
        self._first.set()

    def _run(self) -> None:
        failing = False
        while not self._stopping.is_set():
            try:
                self.refresh()
                if failing:
                    log.info("revocation feed is back")
                failing = False
            except Exception as error:  # the feed's owner may be down: retry, fail closed
                if not failing:
                    log.warning("revocation feed failed: %s", type(error).__name__)
                failing = True
            self._stopping.wait(self._poll)
