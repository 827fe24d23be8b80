"""The audit trail: registration, every login step and its outcome, locks and unlocks,
resets, phone changes, token issue, refresh and revocation, QR confirmation and identity
switching, with entry, province and masked accounts, never a plain personal number."""

from __future__ import annotations

import threading
from pathlib import Path

from etax.auth.v1 import auth_pb2
from etax.binding.v1 import binding_pb2
from sqlalchemy import func, select

from etax_platform.clock import ManualClock
from etax_platform.db import Database
from etax_platform.errors import DomainError, Reason
from etax_platform.observability import request_id
from etax_platform.pii import mask_document, mask_phone
from services.auth.app import MIGRATIONS
from services.auth.audit import AuditEvent, AuditLog, mask_account
from services.auth.models import audit_events
from tests.auth.conftest import failure_of, new_phone, new_resident_id
from tests.auth.platform import ENTERPRISE, Platform, bearer

PHONE_ADD = 4


def test_every_kind_of_event_is_recorded_with_masked_accounts(platform: Platform) -> None:
    person = platform.person(name="欧阳小明")
    code = platform.enterprise(person)
    failure_of(platform.start, person.phone, "Wrong.pass1", province="11")
    session = platform.login(person, entry=ENTERPRISE, enterprise_code=code)
    refreshed = platform.auth.RefreshSession(
        auth_pb2.RefreshSessionRequest(refresh_token=session.refresh_token), timeout=10
    ).session
    platform.auth.SwitchIdentity(
        auth_pb2.SwitchIdentityRequest(identity=binding_pb2.Identity(entry=1)),
        metadata=bearer(refreshed),
        timeout=10,
    )
    created = platform.auth.CreateQrLogin(auth_pb2.CreateQrLoginRequest(province="37"), timeout=10)
    platform.auth.ConfirmQrLogin(
        auth_pb2.ConfirmQrLoginRequest(qr_payload=created.qr_payload),
        metadata=bearer(refreshed),
        timeout=10,
    )
    platform.auth.GetQrLogin(auth_pb2.GetQrLoginRequest(qr_login_id=created.qr_login_id))
    extra = new_phone()
    platform.accounts.add_phone(person.person_id, extra)
    other = platform.person()
    platform.accounts.add_phone(person.person_id, other.phone)  # C4: taken over
    for _ in range(5):
        failure_of(platform.start, person.document, "Wrong.pass1")
    unlock = platform.auth.StartFaceUnlock(
        auth_pb2.StartFaceUnlockRequest(account=person.document), timeout=10
    )
    platform.auth.CompleteFaceUnlock(
        auth_pb2.CompleteFaceUnlockRequest(
            unlock_id=unlock.unlock_id, proof=platform.face.pass_(unlock.face)
        ),
        timeout=10,
    )
    platform.auth.Logout(auth_pb2.LogoutRequest(), metadata=bearer(refreshed), timeout=10)

    events = platform.audit(person_id=person.person_id)
    actions = {(e["action"], e["outcome"]) for e in events}
    assert {
        ("person.register", "ok"),
        ("login.password", "failed"),
        ("login.password", "ok"),
        ("login.send_code", "ok"),
        ("login.complete", "ok"),
        ("session.refresh", "ok"),
        ("identity.switch", "ok"),
        ("qr.confirm", "ok"),
        ("phone.add", "ok"),
        ("lockout.lock", "locked"),
        ("lockout.unlock", "ok"),
        ("face_unlock.complete", "ok"),
        ("session.revoke", "ok"),
    } <= actions
    first = next(e for e in events if e["action"] == "login.password")
    assert (first["action"], first["province"], first["masked_account"], first["reason"]) == (
        "login.password",
        "11",
        mask_phone(person.phone),
        "CREDENTIALS_INVALID",
    )
    completed = next(e for e in events if e["action"] == "login.complete")
    assert completed["entry"] == ENTERPRISE and completed["session_id"] == session.session_id
    assert code in completed["detail"]
    assert all(e["request_id"] for e in events if e["action"].startswith("login."))
    assert [e["action"] for e in platform.audit(person_id=other.person_id)][-1] == (
        "phone.taken_over"
    )
    every_value = " ".join(str(v) for e in platform.audit() for v in e.values())
    for secret in (person.document, person.phone, extra, other.phone, "欧阳小明"):
        assert secret not in every_value
    assert mask_document(person.document) in every_value


def test_c4_registering_with_a_held_phone_records_the_takeover(platform: Platform) -> None:
    """C4: the newcomer's SMS check wins the phone; the audit names both people."""
    holder = platform.person()
    plain = platform.person()
    newcomer = platform.accounts.register(new_resident_id(), name="李四", phone=holder.phone)

    registered = [e for e in platform.audit(person_id=newcomer) if e["action"] == "person.register"]
    assert [(e["outcome"], e["province"]) for e in registered] == [("ok", "37")]
    assert '"takeover": true' in registered[0]["detail"]
    assert [e["action"] for e in platform.audit(person_id=holder.person_id)][-1] == (
        "phone.taken_over"
    )
    untouched = platform.audit(person_id=plain.person_id)
    assert "phone.taken_over" not in [e["action"] for e in untouched]
    assert any(
        '"takeover": false' in e["detail"] for e in untouched if e["action"] == "person.register"
    )


def test_accounts_are_masked_whatever_their_shape() -> None:
    assert mask_account("13812345678") == "138****5678"
    assert mask_account("+86 138 1234 5678") == "138****5678"
    assert mask_account("370102199001011234") == "3701**********1234"
    assert mask_account("zhangsan88") == "Z*******88"
    # Found by the fuzzer: NUL and other control characters never reach the audit row
    # (PostgreSQL refused it, and the attempt went unrecorded).
    assert mask_account("1\x00381234\x005678") == "138****5678"
    assert "\x00" not in mask_account("\x00\x00abc\u200b\x01def\x00")


def test_an_attempt_with_control_characters_is_recorded(platform: Platform) -> None:
    """The refused attempt of an account full of NULs is in the trail, on every database."""
    failure = failure_of(platform.start, "\x00\x0012345\x00")
    assert failure.reason in ("USER_NOT_REGISTERED", "INVALID_ARGUMENT", "PHONE_NOT_FOUND")
    events = platform.audit(action="login.password")
    assert events and "\x00" not in (events[-1]["masked_account"] or "")


def test_batched_events_are_written_off_the_request_path(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    database.migrate(MIGRATIONS)
    audit = AuditLog(database, ManualClock(), journal_dir=tmp_path / "journal", batch_seconds=0.05)
    writer_threads: set[str] = set()
    original = audit._writer._write

    def spy(rows: list[dict[str, object]]) -> None:
        writer_threads.add(threading.current_thread().name)
        original(rows)

    audit._writer._write = spy  # type: ignore[method-assign]
    token = request_id.set("req-1")
    try:
        for index in range(1200):
            audit.record(AuditEvent("login.password", person_id=f"p{index % 7}"))
        try:
            with audit.attempt("password.reset", person_id="p1"):
                raise DomainError(Reason.CODE_EXPIRED)
        except DomainError:
            pass
    finally:
        request_id.reset(token)
    audit.flush()
    with database.reading() as session:
        count = session.scalar(select(func.count()).select_from(audit_events))
        refused = session.execute(
            select(audit_events.c.outcome, audit_events.c.reason, audit_events.c.request_id).where(
                audit_events.c.action == "password.reset"
            )
        ).one()
    assert count == 1201
    assert tuple(refused) == ("refused", "CODE_EXPIRED", "req-1")
    assert writer_threads == {"audit-writer"}
    audit.close()
    database.dispose()
