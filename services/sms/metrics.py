"""The SMS service's domain counters (docs/operations.md): codes sent, throttled (E2) and
verified, by purpose and channel (sms, email)."""

from __future__ import annotations

from etax.common.v1 import types_pb2
from etax.sms.v1 import sms_pb2
from prometheus_client import Counter

SENT = Counter(
    "etax_sms_codes_sent_total",
    "Codes handed to the provider, by purpose and channel.",
    ["purpose", "channel"],
)
THROTTLED = Counter(
    "etax_sms_codes_throttled_total",
    "Sends refused by the E2 throttle (5 per recipient in 10 minutes), by purpose and channel.",
    ["purpose", "channel"],
)
DELIVERY_FAILED = Counter(
    "etax_sms_delivery_failures_total",
    "Codes the provider did not take (PROVIDER_UNAVAILABLE answered), by purpose and channel.",
    ["purpose", "channel"],
)
VERIFIED = Counter(
    "etax_sms_codes_verified_total",
    "Code checks by purpose, channel (unknown when no live code was found) and outcome: "
    "ok or the reason (CODE_INVALID, CODE_EXPIRED, CODE_PURPOSE_MISMATCH).",
    ["purpose", "channel", "outcome"],
)

_PURPOSES = {
    value.number: value.name.removeprefix("VERIFICATION_PURPOSE_").lower()
    for value in types_pb2.VerificationPurpose.DESCRIPTOR.values
}
_CHANNELS: dict[int, str] = {sms_pb2.CHANNEL_SMS: "sms", sms_pb2.CHANNEL_EMAIL: "email"}


def labels(purpose: int, channel: int | None) -> tuple[str, str]:
    return _PURPOSES.get(purpose, "unknown"), _CHANNELS.get(channel or 0, "unknown")
