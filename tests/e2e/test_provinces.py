"""Two bureaus in front of the same services: A3, Q23, Q25.

Shandong (37) and Beijing (11, the deploy/envoy/province-11.env profile) each run their own
Envoy on this machine, with distinct --base-id values, as two provinces' gateways would.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator

import pytest

from etax_platform.gateway import PROFILES, load_settings
from tests.e2e.platform import Platform
from tests.e2e.story import (
    ENTERPRISE,
    NOT_REGISTERED_TEXT,
    SPECIFIC_SUBJECT,
    Bureau,
    Person,
    Session,
    masked,
    new_uscc,
)
from tests.harness.gateway import wait_until

RELATION_TEXT = "未查询到您与该企业的关联关系信息，请确认录入的信息是否正确"
INSPECTION = "SUBJECT_TYPE_CROSS_REGION_INSPECTION"
TAX_SOURCE = "SUBJECT_TYPE_CROSS_REGION_TAX_SOURCE"
SECOND_PROVINCE = load_settings(PROFILES / "province-11.env").province
# Envoy's shared-memory ids on this machine: distinct, and not the fixed ones `make run`
# uses (37, 11), so a developer's running gateways do not collide with these.
BASE_IDS = random.sample(range(1000, 60000), 2)


@pytest.fixture(scope="module")
def shandong(platform: Platform) -> Iterator[Bureau]:
    with platform.gateway("37", base_id=BASE_IDS[0]) as gateway:
        bureau = Bureau(gateway, platform.clock)
        yield bureau
        bureau.close()


@pytest.fixture(scope="module")
def beijing(platform: Platform) -> Iterator[Bureau]:
    with platform.gateway(SECOND_PROVINCE, base_id=BASE_IDS[1]) as gateway:
        bureau = Bureau(gateway, platform.clock)
        yield bureau
        bureau.close()


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return claims


def test_a3_two_bureaus_run_side_by_side_with_distinct_base_ids(
    shandong: Bureau, beijing: Bureau
) -> None:
    """A3 set-up: two provinces' Envoys on one machine (distinct --base-id), each stamping
    its own province on what it forwards."""
    commands = [b.gateway.envoy.command() for b in (shandong, beijing)]
    base_ids = [c[c.index("--base-id") + 1] for c in commands]
    assert base_ids[0] != base_ids[1]
    assert (shandong.province, beijing.province) == ("37", "11")
    # Both serve the same people: a registration started through one is refused through
    # the other once the person is registered.
    person = shandong.register(Person("鲁甲"))
    beijing.start_registration(person).expect("ALREADY_REGISTERED", "该证件已注册，请直接登录")


def test_a3_registered_through_shandong_logs_in_through_beijing(
    shandong: Bureau, beijing: Bureau
) -> None:
    """A3, Q25 (2): 自然人注册后，在全国税务系统任何一个电子税务局均可登录使用，不需要重复注册.
    Registered through Shandong's gateway (gRPC-Web), the person logs in through Beijing's
    (JSON); the session records Beijing."""
    person = shandong.register(Person("鲁注册"))
    session = beijing.login(person, via=beijing.app)
    assert session.person_id == person.person_id
    assert session.province == "11"
    assert _claims(session.token)["province"] == "11"
    profile = beijing.profile(session)
    assert profile["registered_province"] == "37"
    # Beijing's gateway served the login (its access log is flushed every 50 ms).
    wait_until(
        lambda: (
            "etax.auth.v1.AuthService/CompleteLoginWithCode"
            in [e["route"] for e in beijing.gateway.access_log_entries()]
        ),
        "the login in Beijing's access log",
    )
    # The bureau is the gateway's: through Beijing, a login naming Shandong is refused, and
    # one naming no province is Beijing's.
    beijing.start_login(person, province="37").expect(
        "INVALID_ARGUMENT", "请在所选省份的电子税务局办理"
    )
    assert beijing.login_by_face(person, province="").province == "11"
    # And at home the same person's session records Shandong.
    assert shandong.login_by_face(person).province == "37"


def test_a3_registration_takes_the_province_of_the_gateway(
    shandong: Bureau, beijing: Bureau
) -> None:
    """A3 (issue 12): registration does what login does: through a province's gateway the
    gateway's province decides (the JSON client names none), and naming another is refused."""
    person = Person("京登记")
    started = beijing.app.call(
        "AccountService.StartRegistration", {"identity": person.identity, "province": "37"}
    )
    started.expect("INVALID_ARGUMENT", "请在所选省份的电子税务局办理")
    beijing.register(person)
    session = beijing.login(person)
    assert beijing.profile(session)["registered_province"] == "11"


def test_q25_the_person_is_the_identity_everywhere_and_recovery_needs_no_login(
    shandong: Bureau, beijing: Bureau
) -> None:
    """Q25, A1, A3, F1: (1) no enterprise password: a tax officer not yet registered first
    registers (here through Beijing), then the two-way confirmation binds them, and the
    personal password logs in to the Shandong enterprise; (3) 找回手机号码 and 忘记密码
    work from the login page without a session."""
    manager = shandong.register(Person("鲁法人"))
    code = new_uscc("37")
    shandong.new_enterprise(code, manager, name="鲁企有限公司")
    officer = Person("京办税")
    shandong.add_person(code, manager, officer)
    shandong.start_login(officer, ENTERPRISE, enterprise_code=code).expect(
        "USER_NOT_REGISTERED", NOT_REGISTERED_TEXT
    )
    beijing.register(officer)
    shandong.start_login(officer, ENTERPRISE, enterprise_code=code).expect(
        "RELATION_NOT_FOUND", RELATION_TEXT
    )
    beijing.confirm_all_pending(officer)
    session = shandong.login(officer, ENTERPRISE, enterprise_code=code)
    assert (session.identity["enterprise_code"], session.province) == (code, "37")

    reset = beijing.app.call(
        "AuthService.StartPasswordReset", {"account": officer.number, "province": "11"}
    )
    assert reset.ok
    recovery = beijing.app.call(
        "AuthService.StartPhoneRecovery", {"account": officer.number, "password": officer.password}
    )
    assert recovery["recovery_id"]


def test_q23_construction_company_switches_to_home_projects_and_logs_in_where_the_project_is(
    shandong: Bureau, beijing: Bureau
) -> None:
    """Q23, D5, F5: a Shandong construction company. (1) Its people log in through 企业业务
    at home and 【账户中心-身份切换】 lists and switches to its projects in Shandong. (2) Its
    people and the report's handler log in at the project province's bureau (Beijing)
    through 特定主体; the number is searched fuzzily; no relation, no login; 切换主管税务机关
    lists the related projects there."""
    legal_representative = shandong.register(Person("鲁建安"))
    officer = shandong.register(Person("鲁办税"))
    handler = shandong.register(Person("京经办"))
    stranger = shandong.register(Person("无关联"))
    code = new_uscc("37")
    shandong.new_enterprise(code, legal_representative, name="山东建筑安装有限公司")
    shandong.add_tax_officer(code, legal_representative, officer)
    at_home = "KQ370203202600007"
    in_beijing, in_beijing_too = "KQ110105202600008", "KQ110105202600009"
    shandong.record_project(code, at_home, "37-qingdao", TAX_SOURCE)
    shandong.record_project(code, in_beijing, "11", INSPECTION, handlers=(handler,))
    shandong.record_project(code, in_beijing_too, "11", INSPECTION, handlers=(handler,))

    # (1) Home province: identity switching shows the Shandong project only.
    session = shandong.login(officer, ENTERPRISE, enterprise_code=code)
    projects = {i["project_number"] for i in shandong.identities(session) if i["project_number"]}
    assert projects == {at_home}
    # The client passes back exactly what the list gave it (issue 12).
    listed = next(i for i in shandong.identities(session) if i["project_number"] == at_home)
    assert (listed["entry"], listed["subject_type"]) == (ENTERPRISE, TAX_SOURCE)
    switched = Session(
        shandong.web.call("AuthService.SwitchIdentity", {"identity": listed}, token=session.token)[
            "session"
        ]
    )
    assert switched.identity["project_number"] == at_home

    # (2) The project's province: specific subject, by the enterprise's code or the number.
    subject = {"subject_type": INSPECTION}
    beijing.start_login(stranger, SPECIFIC_SUBJECT, subject_number=code, **subject).expect(
        "RELATION_NOT_FOUND", RELATION_TEXT
    )
    for person in (legal_representative, officer, handler):
        session = beijing.login_by_face(person, SPECIFIC_SUBJECT, subject_number=code, **subject)
        assert session.identity["entry"] == SPECIFIC_SUBJECT
        assert session.province == "11"
    found = beijing.web.call(
        "BindingService.SearchSubjects",
        {"subject_type": INSPECTION, "query": "2026000", "province": "11"},
        token=session.token,
    )["subjects"]
    assert {s["project_number"] for s in found} == {in_beijing, in_beijing_too}
    related = beijing.web.call(
        "BindingService.ListRelatedProjects", {"province": "11"}, token=session.token
    )["projects"]
    assert {p["project_number"] for p in related} == {in_beijing, in_beijing_too}
    other = next(n for n in (in_beijing, in_beijing_too) if n != session.identity["project_number"])
    listed = next(i for i in beijing.identities(session) if i["project_number"] == other)
    assert listed["entry"] == SPECIFIC_SUBJECT
    switched = Session(
        beijing.web.call("AuthService.SwitchIdentity", {"identity": listed}, token=session.token)[
            "session"
        ]
    )
    assert switched.identity["project_number"] == other


def test_q23_d5_the_subject_number_is_searched_during_login_among_the_persons_subjects(
    shandong: Bureau, beijing: Bureau
) -> None:
    """Q23, D5 (issue 12): 登录时，编号支持模糊查询 — before a session, once the password is
    verified, and only over the subjects that person is related to; a person with none gets
    the "required" prompt (an empty list), and a stranger learns nothing of anyone's."""
    legal_representative = shandong.register(Person("鲁搜索"))
    stranger = shandong.register(Person("无关联人"))
    code = new_uscc("37")
    shandong.new_enterprise(code, legal_representative, name="山东模糊查询有限公司")
    first, second = "KQ110105202700011", "KQ110105202700012"
    shandong.record_project(code, first, "11", INSPECTION)
    shandong.record_project(code, second, "11", INSPECTION)

    def start(person: Person) -> str:
        started = beijing.start_login(person, SPECIFIC_SUBJECT, subject_type=INSPECTION)
        assert (started["subject_required"], started["second_steps"]) == (True, [])
        return str(started["challenge_id"])

    challenge = start(legal_representative)
    # Step 2 waits for the subject.
    beijing.web.call("AuthService.SendLoginCode", {"challenge_id": challenge}).expect(
        "STATE_CONFLICT", "请先选择特定主体编号"
    )
    found = beijing.app.call(
        "AuthService.SearchLoginSubjects", {"challenge_id": challenge, "query": "2027000"}
    )["subjects"]
    assert {s["project_number"] for s in found} == {first, second}
    assert {s["enterprise_name"] for s in found} == {"山东模糊查询有限公司"}
    narrowed = beijing.app.call(
        "AuthService.SearchLoginSubjects", {"challenge_id": challenge, "query": "0012"}
    )["subjects"]
    assert [s["project_number"] for s in narrowed] == [second]
    selected = beijing.app.call(
        "AuthService.SelectLoginSubject", {"challenge_id": challenge, "subject_number": second}
    )
    assert selected["second_steps"] == ["SECOND_STEP_SMS_CODE", "SECOND_STEP_SCAN_VERIFICATION"]
    assert selected["masked_phone"] == masked(legal_representative.phone)
    beijing.web.call("AuthService.SendLoginCode", {"challenge_id": challenge})
    code_sent = beijing.phones.code(
        legal_representative.phone, purpose="VERIFICATION_PURPOSE_LOGIN"
    )
    session = Session(
        beijing.web.call(
            "AuthService.CompleteLoginWithCode", {"challenge_id": challenge, "code": code_sent}
        )["session"]
    )
    assert (session.identity["entry"], session.identity["project_number"]) == (
        SPECIFIC_SUBJECT,
        second,
    )

    # A stranger: their own password, and nothing to find (the page's "required" prompt).
    theirs = start(stranger)
    for query in ("", "KQ", first, code):
        assert (
            beijing.app.call(
                "AuthService.SearchLoginSubjects", {"challenge_id": theirs, "query": query}
            )["subjects"]
            == []
        )
    beijing.app.call(
        "AuthService.SelectLoginSubject", {"challenge_id": theirs, "subject_number": first}
    ).expect("RELATION_NOT_FOUND", RELATION_TEXT)
    # Without a verified password there is no search at all.
    beijing.app.call(
        "AuthService.SearchLoginSubjects", {"challenge_id": "0" * 32, "query": "KQ"}
    ).expect("TICKET_INVALID")
    wrong = beijing.start_login(
        stranger, SPECIFIC_SUBJECT, password="Wrong.pass1", subject_type=INSPECTION
    )
    wrong.expect("CREDENTIALS_INVALID")
