"""The fuzzer's set-up: people and sessions, so requests get past the first checks.

A registered person who is the legal representative of an enterprise (with an agency
agreement and a cross-region project), logged in as a natural person and through the
enterprise entry; then one of each started flow (login challenge, face ticket, password
reset, phone recovery, unlock, registration, QR login). Every string the answers carry
goes into the pool under its field name (`challenge_id`, `ticket_id`, ...), so fuzzed
requests reuse live ids.
"""

from __future__ import annotations

import time
from typing import Any

from etax_platform.clock import ManualClock
from tests.e2e.api import Reply
from tests.e2e.story import ENTERPRISE, Bureau, Person, new_uscc
from tests.fuzz.generate import Pool
from tests.harness.gateway import RunningGateway

# Tokens and credentials the fuzz must not spend: a refresh token in the pool would let
# RefreshSession or Logout end the very sessions the fuzz sends.
_KEPT_OUT = {"access_token", "refresh_token"}


def harvest(pool: Pool, value: Any, name: str = "") -> None:
    """Every string in a reply body, under the field name that carried it."""
    if isinstance(value, dict):
        for key, item in value.items():
            harvest(pool, item, key)
    elif isinstance(value, list):
        for item in value:
            harvest(pool, item, name)
    elif isinstance(value, str) and name and name not in _KEPT_OUT and len(value) < 512:
        pool.add(name, value)
        if name.endswith("_id"):
            pool.add("any_id", value)


def _harvest(pool: Pool, reply: Reply) -> Reply:
    if reply.ok:
        harvest(pool, reply.body)
    return reply


def seed_pool(gateway: RunningGateway) -> Pool:
    """Registers and logs in the fuzz's people through the gateway; the pool of values."""
    pool = Pool()
    pool.add("now", str(int(time.time())))
    bureau = Bureau(gateway, ManualClock())
    try:
        person = bureau.register(Person("付思"))
        other = bureau.register(Person("付测"))
        code = new_uscc()
        bureau.new_enterprise(code, person)
        agency = new_uscc()
        bureau.agency_forms(agency, (person,), {code: (person,)})
        bureau.record_project(code, "FUZZ-2026-001", "11", handlers=(person,))
        session = bureau.login_by_face(person)
        enterprise = bureau.login_by_face(person, ENTERPRISE, enterprise_code=code)
        pool.tokens = {"session": session.token, "enterprise": enterprise.token}
        for who in (person, other):
            pool.add("account", who.number, who.phone)
            pool.add("number", who.number)
            pool.add("phone", who.phone)
            pool.add("recipient", who.phone)
            pool.add("person_id", who.person_id)
            pool.add("name", who.name)
            pool.add("password", who.password)
            pool.add("old_password", who.password)
        for name in ("enterprise_code", "client_code", "subject_number", "query"):
            pool.add(name, code)
        pool.add("agency_code", agency)
        pool.add("subject_number", "FUZZ-2026-001")
        pool.add("project_number", "FUZZ-2026-001")
        harvest(pool, session.body)
        harvest(pool, enterprise.body)
        web = bureau.web
        _harvest(pool, web.call("BindingService.ListMyIdentities", {}, token=session.token))
        _harvest(
            pool,
            web.call(
                "BindingService.ListEnterpriseRelations",
                {"enterprise_code": code},
                token=enterprise.token,
            ),
        )
        _harvest(pool, web.call("AccountService.GetProfile", {}, token=session.token))
        started = _harvest(pool, bureau.start_login(person))
        if started.ok:
            _harvest(
                pool,
                web.call("AuthService.StartLoginFace", {"challenge_id": started["challenge_id"]}),
            )
            face = pool.by_field.get("qr_payload", [])
            if face:
                _harvest(pool, bureau.tax_app.scan(face[-1]))
        _harvest(
            pool,
            web.call(
                "AuthService.StartPasswordReset",
                {"account": other.number, "province": bureau.province},
            ),
        )
        _harvest(
            pool,
            web.call(
                "AuthService.StartPhoneRecovery",
                {"account": other.number, "password": other.password},
            ),
        )
        _harvest(pool, web.call("AuthService.StartFaceUnlock", {"account": other.number}))
        _harvest(pool, web.call("AuthService.CreateQrLogin", {"province": bureau.province}))
        _harvest(pool, bureau.start_registration(Person("付新")))
        _harvest(pool, web.call("AccountService.StartRealNameUpgrade", {}, token=session.token))
    finally:
        bureau.close()
    return pool
