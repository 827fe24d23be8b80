"""Settings validated at start, the CST clock, access tokens, log masking, generated code."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from etax.sms.v1 import sms_pb2
from google.protobuf import timestamp_pb2
from pydantic import ValidationError

from etax_platform.clock import (
    CST,
    EARLIEST_INSTANT,
    LATEST_INSTANT,
    ManualClock,
    cst_day,
    from_timestamp,
    next_cst_midnight,
    optional_instant,
    to_timestamp,
)
from etax_platform.errors import DomainError, Reason
from etax_platform.gateway import GatewaySettings
from etax_platform.observability import MaskingFormatter
from etax_platform.pii import Keyring
from etax_platform.settings import PlatformSettings, development_secret
from etax_platform.tokens import AccessClaims, SigningKey, TokenIssuer, TokenVerifier

REPO = Path(__file__).resolve().parents[2]


def test_production_refuses_generated_keys_and_the_in_process_store() -> None:
    with pytest.raises(ValidationError, match="ETAX_PII_KEYS"):
        PlatformSettings(environment="production")
    keys = Keyring.generate().dump()
    with pytest.raises(ValidationError, match="ETAX_KV_URL"):
        PlatformSettings(
            environment="production", pii_keys=keys["keys"], pii_index_key=keys["index_key"]
        )


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETAX_KV_URL", "redis://127.0.0.1:6390/2")
    monkeypatch.setenv("ETAX_LOG_LEVEL", "DEBUG")
    settings = PlatformSettings()
    assert (settings.kv_url, settings.log_level) == ("redis://127.0.0.1:6390/2", "DEBUG")
    monkeypatch.setenv("ETAX_KV_URL", "mongodb://nope")
    with pytest.raises(ValidationError, match="kv_url"):
        PlatformSettings()


def test_development_keys_are_made_once_and_shared_by_concurrent_starts(tmp_path: Path) -> None:
    def load(_: int) -> dict[str, str]:
        return PlatformSettings(data_dir=tmp_path).keyring().dump()

    with ThreadPoolExecutor(8) as pool:
        rings = list(pool.map(load, range(16)))
    assert all(ring == rings[0] for ring in rings)
    assert development_secret(tmp_path, "pii-keys", dict) == rings[0]
    assert (tmp_path / "secrets" / "pii-keys.json").stat().st_mode & 0o077 == 0


def test_cst_days_and_midnights() -> None:
    late_utc = datetime(2026, 11, 27, 16, 30, tzinfo=CST).astimezone(CST)
    assert cst_day(late_utc).isoformat() == "2026-11-27"
    utc_evening = datetime.fromisoformat("2026-11-27T17:00:00+00:00")  # 01:00 next day in CST
    assert cst_day(utc_evening).isoformat() == "2026-11-28"
    assert next_cst_midnight(utc_evening) == datetime(2026, 11, 29, tzinfo=CST)


def _claims() -> AccessClaims:
    return AccessClaims(
        person_id="p-1",
        session_id="s-1",
        entry=2,
        province="37",
        real_name_level=4,
        methods=("password", "sms"),
        enterprise_code="91110000600037341L",
        role=3,
    )


def test_access_token_round_trip() -> None:
    clock = ManualClock()
    key = SigningKey.generate()
    token, expires = TokenIssuer(key, clock).issue(_claims())
    verifier = TokenVerifier(lambda: [key.public_jwk()], clock)
    claims = verifier.verify(token)
    assert claims == _claims()
    assert expires == clock.now() + timedelta(minutes=15)


def test_access_token_expires_by_the_injected_clock() -> None:
    clock = ManualClock()
    key = SigningKey.generate()
    token, _ = TokenIssuer(key, clock, ttl=timedelta(minutes=5)).issue(_claims())
    verifier = TokenVerifier(lambda: [key.public_jwk()], clock)
    clock.advance(timedelta(minutes=6))
    with pytest.raises(DomainError) as caught:
        verifier.verify(token)
    assert caught.value.reason is Reason.UNAUTHENTICATED


def test_a_remembered_token_still_expires_by_the_clock() -> None:
    clock = ManualClock()
    key = SigningKey.generate()
    token, _ = TokenIssuer(key, clock, ttl=timedelta(minutes=5)).issue(_claims())
    fetches = []
    verifier = TokenVerifier(lambda: fetches.append(1) or [key.public_jwk()], clock)
    assert verifier.verify(token) == verifier.verify(token)
    assert len(fetches) == 1
    clock.advance(timedelta(minutes=6))
    with pytest.raises(DomainError):
        verifier.verify(token)


def test_forged_and_tampered_tokens_are_refused() -> None:
    clock = ManualClock()
    key, other = SigningKey.generate(), SigningKey.generate()
    verifier = TokenVerifier(lambda: [key.public_jwk()], clock)
    forged, _ = TokenIssuer(SigningKey(key.kid, other.private_key), clock).issue(_claims())
    genuine, _ = TokenIssuer(key, clock).issue(_claims())
    header, payload, signature = genuine.split(".")
    tampered = ".".join(
        [header, payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB"), signature]
    )
    for token in (forged, tampered, "not-a-token", genuine + "x"):
        with pytest.raises(DomainError):
            verifier.verify(token)


def test_verifier_fetches_keys_again_for_a_new_key_id() -> None:
    clock = ManualClock()
    first, second = SigningKey.generate(), SigningKey.generate()
    published = [first.public_jwk()]
    verifier = TokenVerifier(lambda: list(published), clock)
    verifier.verify(TokenIssuer(first, clock).issue(_claims())[0])
    published.append(second.public_jwk())
    verifier._tried_at = float("-inf")  # the rate limit between fetches has passed
    assert verifier.verify(TokenIssuer(second, clock).issue(_claims())[0]).person_id == "p-1"


class Published:
    """A key set that can change, or fail to be fetched, and counts its fetches."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.down = False

    def __call__(self) -> list[dict[str, str]]:
        self.fetches += 1
        if self.down:
            raise DomainError(Reason.PROVIDER_UNAVAILABLE)
        return [k.public_jwk() for k in self.keys]


def _refused(verifier: TokenVerifier, token: str) -> Reason:
    with pytest.raises(DomainError) as caught:
        verifier.verify(token)
    return caught.value.reason


def test_a_key_no_longer_published_is_dropped_once_the_cache_time_has_passed() -> None:
    """As Envoy's JWKS cache: a withdrawn key works until the copy is 300 s old, no longer."""
    clock = ManualClock()
    first, second = SigningKey.generate(), SigningKey.generate()
    published = Published(first)
    verifier = TokenVerifier(published, clock, cache_seconds=300)
    withdrawn, _ = TokenIssuer(first, clock, ttl=timedelta(hours=2)).issue(_claims())
    assert verifier.verify(withdrawn).person_id == "p-1"  # remembered from now on
    published.keys = [second]
    clock.advance(timedelta(seconds=299))
    assert verifier.verify(withdrawn).person_id == "p-1"  # the copy is still fresh
    assert published.fetches == 1
    clock.advance(timedelta(seconds=2))
    assert _refused(verifier, withdrawn) is Reason.UNAUTHENTICATED
    assert published.fetches == 2
    fresh, _ = TokenIssuer(second, clock).issue(_claims())
    assert verifier.verify(fresh).person_id == "p-1"
    assert published.fetches == 2


def test_a_key_id_published_again_with_another_key_drops_the_tokens_of_the_old_one() -> None:
    clock = ManualClock()
    first, other = SigningKey.generate(), SigningKey.generate()
    published = Published(first)
    verifier = TokenVerifier(published, clock, cache_seconds=60)
    token, _ = TokenIssuer(first, clock).issue(_claims())
    verifier.verify(token)
    published.keys = [SigningKey(first.kid, other.private_key)]
    clock.advance(timedelta(seconds=61))
    assert _refused(verifier, token) is Reason.UNAUTHENTICATED


def test_the_key_set_is_fetched_once_per_cache_time() -> None:
    clock = ManualClock()
    key = SigningKey.generate()
    published = Published(key)
    verifier = TokenVerifier(published, clock, cache_seconds=300)
    for _ in range(3):
        for _ in range(5):
            verifier.verify(TokenIssuer(key, clock).issue(_claims())[0])
        clock.advance(timedelta(seconds=150))
    assert published.fetches == 2  # at 0 s and at 300 s


def test_a_failed_refresh_keeps_the_copy_until_the_keys_can_be_fetched() -> None:
    clock = ManualClock()
    first, second = SigningKey.generate(), SigningKey.generate()
    published = Published(first)
    verifier = TokenVerifier(published, clock, cache_seconds=300)
    token, _ = TokenIssuer(first, clock, ttl=timedelta(hours=1)).issue(_claims())
    verifier.verify(token)
    published.down = True
    clock.advance(timedelta(seconds=301))
    assert verifier.verify(token).person_id == "p-1"
    assert published.fetches == 2
    assert verifier.verify(token).person_id == "p-1"
    assert published.fetches == 2  # no second try within the rate limit
    published.down, published.keys = False, [second]
    verifier._tried_at = float("-inf")  # the rate limit between fetches has passed
    assert _refused(verifier, token) is Reason.UNAUTHENTICATED


def test_without_any_keys_a_failed_fetch_is_unavailable_not_unauthenticated() -> None:
    clock = ManualClock()
    key = SigningKey.generate()
    published = Published(key)
    published.down = True
    verifier = TokenVerifier(published, clock)
    token, _ = TokenIssuer(key, clock).issue(_claims())
    assert _refused(verifier, token) is Reason.PROVIDER_UNAVAILABLE
    assert _refused(verifier, token) is Reason.PROVIDER_UNAVAILABLE  # within the rate limit
    assert published.fetches == 1


def test_services_keep_the_key_set_as_long_as_the_gateway_does() -> None:
    assert PlatformSettings().jwks_cache_seconds == GatewaySettings().jwks_cache_seconds == 300


def test_log_lines_are_masked_including_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(MaskingFormatter("%(message)s"))
    logger = logging.getLogger("test.masking")
    logger.addHandler(handler)
    try:
        logger.warning("login by %s from %s", "13812341234", "11010519491231002X")
        try:
            raise ValueError("bad document 11010519491231002X")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "13812341234" not in output and "138****1234" in output
    assert "11010519491231002X" not in output and "1101**********002X" in output


def test_generated_code_is_fresh() -> None:
    """make protos regenerates whenever a .proto changed; tests never run on stale code."""
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"],
        check=False,
        cwd=REPO,
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "instant",
    [
        datetime(2026, 11, 27, 8, 30, 0, 123456, tzinfo=CST),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before the epoch
        EARLIEST_INSTANT,
        LATEST_INSTANT,
        datetime(2026, 11, 27, 8, 30),  # naive: read as UTC, as protobuf does
    ],
)
def test_a_timestamp_is_what_protobufs_own_conversion_makes(instant: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(instant)
    assert to_timestamp(instant) == expected


def test_an_unset_timestamp_field_is_no_instant_and_a_set_one_reads_in_cst() -> None:
    instant = datetime(2026, 11, 27, 8, 30, tzinfo=CST)
    unset = sms_pb2.VerifyCodeResponse()
    assert optional_instant(unset, "verified_at") is None
    set_ = sms_pb2.VerifyCodeResponse(verified_at=to_timestamp(instant))
    read = optional_instant(set_, "verified_at")
    assert read == instant and read is not None and read.tzinfo == CST


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (253402300799, 0),  # 9999-12-31T23:59:59Z: valid protobuf, overflows a CST datetime
        (int(LATEST_INSTANT.timestamp()), 0),  # no room left for arithmetic on it
        (253402300800, 0),  # past protobuf's range
        (-62135596800, 0),  # 0001-01-01T00:00:00Z
        (-1, 0),  # before EARLIEST_INSTANT
        (2**62, 0),
        (0, 1_000_000_000),
        (0, -1),
    ],
)
def test_an_out_of_range_timestamp_is_invalid_input_naming_the_field(
    seconds: int, nanos: int
) -> None:
    """Bad bytes are INVALID_ARGUMENT, never INTERNAL (DESIGN.md, Errors; issue 11 item 4)."""
    request = sms_pb2.VerifyCodeResponse(
        verified_at=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    )
    with pytest.raises(DomainError) as caught:
        optional_instant(request, "verified_at")
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert caught.value.metadata == {"field": "verified_at"}


def test_the_ends_of_the_accepted_range_read_and_leave_room_for_arithmetic() -> None:
    earliest = from_timestamp(to_timestamp(EARLIEST_INSTANT))
    latest = from_timestamp(
        timestamp_pb2.Timestamp(seconds=int(LATEST_INSTANT.timestamp()) - 1, nanos=999_999_999)
    )
    assert earliest == EARLIEST_INSTANT and earliest.tzinfo == CST
    assert latest < LATEST_INSTANT
    # A year later, its CST midnight: what domain code may do with an accepted instant.
    assert next_cst_midnight(latest + timedelta(days=365)) > latest
