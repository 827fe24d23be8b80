"""The face broker's domain counters (docs/operations.md): tickets by purpose, captures by
purpose and B7 outcome, identity checks. The HTTP provider's breaker and attempts are
etax_provider_* (etax_platform/outbound.py)."""

from __future__ import annotations

from etax.common.v1 import types_pb2
from prometheus_client import Counter

from services.face.domain import FailureKind, ImageHint, Ticket

TICKETS = Counter(
    "etax_face_tickets_created_total", "Verification tickets created, by purpose.", ["purpose"]
)
CAPTURES = Counter(
    "etax_face_captures_total",
    "Captures judged, by purpose and outcome (B7): pass, poor_image_too_dark, "
    "poor_image_other_face_in_view, poor_image_no_required_motion, poor_image_unspecified, "
    "mismatch, go_to_hall (repeated mismatches), busy (provider busy or down), "
    "not_recorded (the ticket closed meanwhile).",
    ["purpose", "outcome"],
)
IDENTITY_CHECKS = Counter(
    "etax_face_identity_checks_total",
    "B1 identity checks with the real-name authority, by outcome (match, no_match, busy).",
    ["outcome"],
)

_PURPOSES = {
    value.number: value.name.removeprefix("VERIFICATION_PURPOSE_").lower()
    for value in types_pb2.VerificationPurpose.DESCRIPTOR.values
}


def purpose_name(purpose: int) -> str:
    return _PURPOSES.get(purpose, "unknown")


def capture(purpose: int, outcome: str) -> None:
    CAPTURES.labels(purpose_name(purpose), outcome).inc()


def judged(passed: bool, ticket: Ticket) -> str:
    """The outcome word of a capture just judged, from the ticket it left."""
    failure = ticket.last_failure
    if passed or failure is None:
        return "pass" if passed else "mismatch"
    if failure.kind is FailureKind.POOR_IMAGE:
        return f"poor_image_{ImageHint(failure.hint).name.lower()}"
    return FailureKind(failure.kind).name.lower()
