"""Use cases of the face broker: tickets in the key-value store, captures to the provider.

Tickets live in the shared `KeyValueStore`, one record per ticket, changed only through
`store.update` with the pure transitions of `domain`, so any replica serves any step and
concurrent calls cannot pass and expire a ticket at once, or redeem it twice. The store's
TTL only collects garbage; deadlines are in the record and judged by the injected clock.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from etax_platform.clock import Clock
from etax_platform.errors import DomainError, Reason, invalid
from etax_platform.kv import KeyValueStore
from etax_platform.pii import PersonalData, mask_name
from services.face import domain, metrics
from services.face.domain import Identity, Signer, Ticket, TicketView, Verdict
from services.face.providers import FaceProvider, ProviderBusy

log = logging.getLogger("etax.face")

R = TypeVar("R")

_IDENTITY_CONTEXT = "face.ticket.identity"
# Records stay this long after their last deadline, so CollectFailures still finds the
# mismatches of a failed or expired ticket.
_RETENTION = timedelta(hours=1)
_DEFAULT_RETRY_AFTER = timedelta(seconds=3)


def _short(ticket_id: str) -> str:
    """Enough of a ticket id to follow it in the logs, too little to use it."""
    return ticket_id[:6]


@dataclass(frozen=True)
class CreatedTicket:
    ticket_id: str
    qr_payload: str
    expires_at: datetime


@dataclass(frozen=True)
class ScanResult:
    ticket_id: str
    purpose: int
    masked_name: str
    scan_token: str
    identity_required: bool
    expires_at: datetime


@dataclass(frozen=True)
class Redeemed:
    ticket_id: str
    verified_at: datetime
    identity: Identity
    uncollected_failures: int


@dataclass(frozen=True)
class Collected:
    new_failures: int
    state: domain.TicketState


class _Watchers:
    """Open watches per ticket in this process, at most `per_ticket` each: a page that
    opens watch after watch (or a script that does) is refused, not served."""

    def __init__(self, per_ticket: int) -> None:
        self._per_ticket = per_ticket
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def watching(self, ticket_id: str) -> Iterator[None]:
        with self._lock:
            if self._open[ticket_id] >= self._per_ticket:
                raise DomainError(
                    Reason.TOO_MANY_REQUESTS, metadata={"limit": "watchers_per_ticket"}
                )
            self._open[ticket_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._open[ticket_id] -= 1
                if not self._open[ticket_id]:
                    del self._open[ticket_id]


class FaceService:
    def __init__(
        self,
        *,
        store: KeyValueStore,
        clock: Clock,
        provider: FaceProvider,
        signer: Signer,
        personal_data: PersonalData,
        ticket_ttl: timedelta = timedelta(seconds=120),
        proof_ttl: timedelta = timedelta(seconds=120),
        max_mismatches: int = 3,
        capture_hold: timedelta = timedelta(seconds=30),
        watch_poll_seconds: float = 0.2,
        max_watchers_per_ticket: int = 4,
    ) -> None:
        self._store = store
        self._clock = clock
        self._provider = provider
        self._signer = signer
        self._personal_data = personal_data
        self._ticket_ttl = ticket_ttl
        self._proof_ttl = proof_ttl
        self._max_mismatches = max_mismatches
        self._capture_hold = capture_hold
        self._watch_poll = watch_poll_seconds
        self._watchers = _Watchers(max_watchers_per_ticket)
        self._store_ttl = ticket_ttl + proof_ttl + _RETENTION

    # --- helpers -------------------------------------------------------------------------

    @staticmethod
    def _key(ticket_id: str) -> str:
        return f"face:ticket:{ticket_id}"

    def _seal(self, identity: Identity) -> str:
        return self._personal_data.encrypt(identity.to_json(), _IDENTITY_CONTEXT)

    def _unseal(self, sealed: str) -> Identity:
        return Identity.from_json(self._personal_data.decrypt(sealed, _IDENTITY_CONTEXT))

    def _view(self, ticket_id: str) -> TicketView:
        current = self._store.get(self._key(ticket_id))
        if current is None:
            raise DomainError(Reason.TICKET_INVALID)
        return domain.stored_view(current.value, self._clock.now())

    def _change(self, ticket_id: str, transition: Callable[[Ticket], tuple[Ticket, R]]) -> R:
        """Applies a pure transition atomically; an unknown ticket is TICKET_INVALID."""

        def change(raw: bytes | None) -> tuple[bytes | None, R]:
            if raw is None:
                raise DomainError(Reason.TICKET_INVALID)
            new, result = transition(Ticket.from_bytes(raw))
            return new.to_bytes(), result

        return self._store.update(self._key(ticket_id), change, self._store_ttl)

    # --- use cases -----------------------------------------------------------------------

    def create_ticket(
        self, purpose: int, subject_ref: str, identity: Identity | None
    ) -> CreatedTicket:
        domain.check_subject_ref(subject_ref)
        now = self._clock.now()
        sealed = None if identity is None else self._seal(identity)
        while True:
            ticket_id = secrets.token_urlsafe(24)
            ticket = domain.new_ticket(
                ticket_id,
                purpose=purpose,
                subject_ref=subject_ref,
                identity_sealed=sealed,
                now=now,
                ttl=self._ticket_ttl,
                max_mismatches=self._max_mismatches,
            )
            if self._store.create(self._key(ticket_id), ticket.to_bytes(), self._store_ttl):
                break
        metrics.TICKETS.labels(metrics.purpose_name(purpose)).inc()
        log.info(
            "ticket %s created: purpose %d%s",
            _short(ticket_id),
            purpose,
            ", subject-less" if identity is None else "",
        )
        return CreatedTicket(
            ticket_id, self._signer.qr_payload(ticket_id, ticket.expires_at), ticket.expires_at
        )

    def get_ticket(self, ticket_id: str) -> TicketView:
        domain.check_ticket_id(ticket_id)
        return self._view(ticket_id)

    def watch_ticket(
        self, ticket_id: str, *, stopping: threading.Event, active: Callable[[], bool]
    ) -> Iterator[TicketView]:
        """The ticket now, then each change, until a final state, cancellation or shutdown.

        Polls the store every `watch_poll_seconds` rather than subscribing: any replica may
        change the ticket, expiry is a matter of the clock and writes nothing, and one GET
        per watcher per poll (5/s at 0.2 s) stays far below what Redis serves, without a
        pub/sub connection and listener thread per replica. Waits on the host's `stopping`
        event, so a shutdown ends every stream at once; cancellation is seen within one
        poll; and a stream never outlives the ticket's own lifetime in real time.
        """
        domain.check_ticket_id(ticket_id)
        give_up_at = time.monotonic() + (self._ticket_ttl + self._proof_ttl).total_seconds()
        last: TicketView | None = None
        with self._watchers.watching(ticket_id):
            while True:
                current = self._view(ticket_id)
                if current != last:
                    yield current
                    last = current
                if current.is_final:
                    return
                if stopping.wait(self._watch_poll) or not active():
                    return
                if time.monotonic() > give_up_at:
                    return

    def scan_ticket(self, qr_payload: str) -> ScanResult:
        now = self._clock.now()
        ticket_id = self._signer.open_qr_payload(qr_payload, now)
        scan_token = secrets.token_urlsafe(24)
        token_hash = domain.token_hash(scan_token)

        def scan(ticket: Ticket) -> tuple[Ticket, Ticket]:
            new = domain.scanned(ticket, token_hash, now)
            return new, new

        ticket = self._change(ticket_id, scan)
        masked = (
            ""
            if ticket.identity_sealed is None
            else mask_name(self._unseal(ticket.identity_sealed).name)
        )
        log.info("ticket %s scanned", _short(ticket_id))
        return ScanResult(
            ticket_id=ticket_id,
            purpose=ticket.purpose,
            masked_name=masked,
            scan_token=scan_token,
            identity_required=ticket.subjectless,
            expires_at=ticket.expires_at,
        )

    def submit_capture(
        self, ticket_id: str, scan_token: str, capture: bytes, identity: Identity | None
    ) -> TicketView:
        """Judges a capture (B7) and returns the ticket with the verdict recorded.

        Poor image, mismatch and go-to-hall are outcomes in the returned ticket
        (`last_failure`), not errors. A busy provider is FACE_SERVICE_BUSY and leaves the
        ticket open without counting anything.
        """
        domain.check_ticket_id(ticket_id)
        if not scan_token:
            raise invalid("scan_token")
        domain.check_capture(capture)
        token_hash = domain.token_hash(scan_token)
        capture_id = secrets.token_hex(8)
        started_at = self._clock.now()

        def start(ticket: Ticket) -> tuple[Ticket, Ticket]:
            new = domain.capture_started(
                ticket, token_hash, capture_id, started_at, self._capture_hold
            )
            if ticket.subjectless and identity is None:
                raise invalid("identity")
            if not ticket.subjectless and identity is not None:
                raise invalid("identity", message="该二维码已指定核验人员，无需提供身份信息")
            return new, new

        started = self._change(ticket_id, start)
        # Subject-less tickets compare with the identity the APP sent (D5 face login).
        target = (
            identity if started.identity_sealed is None else self._unseal(started.identity_sealed)
        )
        assert target is not None

        try:
            verdict = self._provider.verify_face(target, capture)
        except ProviderBusy as busy:
            now = self._clock.now()
            self._change(ticket_id, lambda t: (domain.capture_busy(t, capture_id, now), None))
            log.warning("ticket %s: provider busy (%s)", _short(ticket_id), busy.why)
            metrics.capture(started.purpose, "busy")
            raise DomainError(
                Reason.FACE_SERVICE_BUSY, retry_after=busy.retry_after or _DEFAULT_RETRY_AFTER
            ) from None
        except BaseException:
            self._change(ticket_id, lambda t: (domain.capture_abandoned(t, capture_id), None))
            raise

        decided_at = self._clock.now()
        proof_expires_at = decided_at + self._proof_ttl
        passed = verdict.verdict is Verdict.PASS
        proof, passed_identity_sealed = "", ""
        if passed:
            proof = self._signer.proof(
                ticket_id, started.purpose, started.subject_ref, proof_expires_at
            )
            passed_identity_sealed = started.identity_sealed or self._seal(target)

        def judge(ticket: Ticket) -> tuple[Ticket, tuple[Ticket, bool]]:
            recorded = ticket.is_open_at(decided_at)
            new = domain.capture_judged(
                ticket,
                capture_id,
                verdict,
                decided_at,
                proof=proof,
                proof_expires_at=proof_expires_at,
                passed_identity_sealed=passed_identity_sealed,
            )
            return new, (new, recorded)

        ticket, recorded = self._change(ticket_id, judge)
        log.info(
            "ticket %s capture judged: %s%s",
            _short(ticket_id),
            verdict.verdict.value,
            "" if recorded else " (ticket no longer open: not recorded)",
        )
        metrics.capture(
            started.purpose, metrics.judged(passed, ticket) if recorded else "not_recorded"
        )
        if not recorded:
            raise DomainError(Reason.TICKET_INVALID)
        return domain.view(ticket, decided_at)

    def redeem_proof(self, proof: str, purpose: int, subject_ref: str) -> Redeemed:
        domain.check_subject_ref(subject_ref)
        now = self._clock.now()
        ticket_id = self._signer.open_proof(proof, purpose, subject_ref, now)

        def redeem(ticket: Ticket) -> tuple[Ticket, tuple[Ticket, int]]:
            new, uncollected = domain.redeemed(ticket, proof, purpose, subject_ref, now)
            return new, (new, uncollected)

        ticket, uncollected = self._change(ticket_id, redeem)
        assert ticket.passed_at is not None
        log.info("ticket %s proof redeemed", _short(ticket_id))
        return Redeemed(
            ticket_id=ticket_id,
            verified_at=ticket.passed_at,
            identity=self._unseal(ticket.passed_identity_sealed),
            uncollected_failures=uncollected,
        )

    def collect_failures(self, ticket_id: str, subject_ref: str) -> Collected:
        domain.check_ticket_id(ticket_id)
        domain.check_subject_ref(subject_ref)
        now = self._clock.now()

        def collect(ticket: Ticket) -> tuple[Ticket, Collected]:
            new, count = domain.failures_collected(ticket, subject_ref)
            return new, Collected(count, new.state_at(now))

        return self._change(ticket_id, collect)

    def check_identity(self, identity: Identity) -> bool:
        try:
            match = self._provider.check_identity(identity)
        except ProviderBusy as busy:
            log.warning("identity check: provider busy (%s)", busy.why)
            metrics.IDENTITY_CHECKS.labels("busy").inc()
            raise DomainError(
                Reason.FACE_SERVICE_BUSY, retry_after=busy.retry_after or _DEFAULT_RETRY_AFTER
            ) from None
        log.info("identity check for %r: %s", identity, "match" if match else "no match")
        metrics.IDENTITY_CHECKS.labels("match" if match else "no_match").inc()
        return match
