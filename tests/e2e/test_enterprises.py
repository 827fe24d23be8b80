"""Enterprises, relations, agents and the old login: Q1, Q2, Q6, Q8, Q9, Q10, Q24, Q26, Q27.

Q10's closing date moves the clock by weeks, so it comes last in this module.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
from etax.auth.v1 import auth_pb2
from etax.binding.v1 import binding_pb2
from etax.common.v1 import types_pb2

from tests.e2e.api import Reply
from tests.e2e.platform import Platform
from tests.e2e.story import (
    AGENT,
    ENTERPRISE,
    NATURAL_PERSON,
    NOT_REGISTERED_TEXT,
    SPECIFIC_SUBJECT,
    Bureau,
    Person,
    Session,
    legacy_password_hash,
    new_uscc,
)
from tests.harness.gateway import grpc_web_call

RELATION_TEXT = "未查询到您与该企业的关联关系信息，请确认录入的信息是否正确"
CONFIRMERS_TEXT = "仅企业法定代表人或财务负责人可以办理此业务"
INSPECTION = "SUBJECT_TYPE_CROSS_REGION_INSPECTION"


def _switch(bureau: Bureau, session: Session, **identity: str) -> Reply:
    return bureau.web.call(
        "AuthService.SwitchIdentity", {"identity": identity}, token=session.token
    )


# --- Q1, Q26: enterprises appear through the core tax system -------------------------------


def test_q01_enterprises_are_never_registered_online_the_core_tax_system_confirms_them(
    bureau: Bureau,
) -> None:
    """Q1, A2: 电子税务局无需"企业注册": nothing on the public listener creates an enterprise;
    the core tax system's confirmation (新办纳税人套餐 or the hall) does, and records the
    legal representative's relation waiting for that person's confirmation."""
    legal_representative = bureau.register(Person("张总"))
    code = new_uscc()
    request = binding_pb2.ConfirmTaxpayerRegistrationRequest(
        enterprise_code=code, name="济南新办企业有限公司"
    )
    method = "/etax.binding.v1.InternalBindingService/ConfirmTaxpayerRegistration"
    assert grpc_web_call(bureau.gateway.url(method), request.SerializeToString()).http_status == 404
    assert httpx.post(bureau.gateway.url(method), json={}, timeout=10).status_code == 404

    confirmed = bureau.core_tax.confirm_taxpayer_registration(
        code, "济南新办企业有限公司", legal_representative
    )
    assert confirmed.enterprise.code == code
    (relation,) = confirmed.relations
    assert relation.role == types_pb2.ROLE_LEGAL_REPRESENTATIVE
    assert relation.state == binding_pb2.RELATION_STATE_PENDING
    assert relation.confirming_party == binding_pb2.CONFIRMING_PARTY_PERSON
    assert relation.masked_person_name == "张*"


def test_q01_related_real_name_person_logs_in_through_the_enterprise_entry(
    bureau: Bureau,
) -> None:
    """Q1, A1, F2, F3: "具有关联关系的实名纳税人即可通过企业业务入口登录": the person and
    their personal password, no enterprise account; only once the relation is bound."""
    legal_representative = bureau.register(Person("张总"))
    code = new_uscc()
    bureau.core_tax.confirm_taxpayer_registration(code, "济南一号有限公司", legal_representative)
    bureau.start_login(legal_representative, ENTERPRISE, enterprise_code=code).expect(
        "RELATION_NOT_FOUND", RELATION_TEXT
    )
    bureau.confirm_all_pending(legal_representative)
    session = bureau.login(legal_representative, ENTERPRISE, enterprise_code=code)
    assert session.person_id == legal_representative.person_id
    assert session.identity["entry"] == ENTERPRISE
    assert session.identity["enterprise_code"] == code
    assert session.identity["enterprise_name"] == "济南一号有限公司"
    assert session.identity["role"] == "ROLE_LEGAL_REPRESENTATIVE"


def test_q26_financial_officer_relation_is_recorded_on_registration_and_confirmed_once(
    bureau: Bureau,
) -> None:
    """Q26, A2, F2: the registration records the financial officer's relation; the officer
    logs in as a natural person, confirms it in the account center, and is bound."""
    legal_representative = bureau.register(Person("章法人"))
    officer = bureau.register(Person("钱财务"))
    code = new_uscc()
    confirmed = bureau.core_tax.confirm_taxpayer_registration(
        code, "济南财务测试有限公司", legal_representative, officer
    )
    roles = {r.role: r for r in confirmed.relations}
    assert roles[types_pb2.ROLE_FINANCIAL_OFFICER].state == binding_pb2.RELATION_STATE_PENDING
    bureau.start_login(officer, ENTERPRISE, enterprise_code=code).expect(
        "RELATION_NOT_FOUND", RELATION_TEXT
    )

    session = bureau.login(officer)
    (pending,) = bureau.pending(session)
    assert (pending["enterprise_code"], pending["role"]) == (code, "ROLE_FINANCIAL_OFFICER")
    assert pending["enterprise_name"] == "济南财务测试有限公司"
    assert bureau.confirm(session, pending["relation_id"])["relation"]["state"] == (
        "RELATION_STATE_ACTIVE"
    )
    assert bureau.pending(session) == []
    enterprise = bureau.login(officer, ENTERPRISE, enterprise_code=code)
    assert enterprise.identity["role"] == "ROLE_FINANCIAL_OFFICER"


# --- Q2: one personal password ---------------------------------------------------------------


def test_q02_the_personal_password_serves_every_entry_and_forgot_password_resets_it(
    bureau: Bureau,
) -> None:
    """Q2, A1, C5: there is no enterprise password; the personal password of the real-name
    registration logs in to 企业业务, 自然人业务 and 代理业务; 忘记密码 resets it for all."""
    person = bureau.register(Person("刘通用"))
    code, agency, client = new_uscc(), new_uscc(), new_uscc()
    bureau.new_enterprise(code, person, name="刘氏商贸有限公司")
    bureau.new_enterprise(client, bureau.register(Person("委托方")), name="委托客户有限公司")
    bureau.agency_forms(agency, (person,), {client: (person,)})
    entries: list[tuple[str, dict[str, str]]] = [
        (NATURAL_PERSON, {}),
        (ENTERPRISE, {"enterprise_code": code}),
        (AGENT, {"agency_code": agency}),
    ]
    for entry, target in entries:
        session = bureau.login_by_face(person, entry, **target)
        assert (session.identity["entry"], session.person_id) == (entry, person.person_id)

    reset = bureau.web.call(
        "AuthService.StartPasswordReset", {"account": person.number, "province": bureau.province}
    )
    assert bureau.web.call("AuthService.SendPasswordResetCode", {"reset_id": reset["reset_id"]}).ok
    code_sent = bureau.phones.code(person.phone, purpose="VERIFICATION_PURPOSE_PASSWORD_RESET")
    old_password, person.password = person.password, "Reset.2023ok"
    assert bureau.web.call(
        "AuthService.CompletePasswordReset",
        {"reset_id": reset["reset_id"], "code": code_sent, "new_password": person.password},
    ).ok
    for entry, target in entries:
        bureau.start_login(person, entry, password=old_password, **target).expect(
            "CREDENTIALS_INVALID"
        )
        assert bureau.login_by_face(person, entry, **target).person_id == person.person_id


# --- Q6: specific subjects ---------------------------------------------------------------------


def test_q06_cross_region_taxpayer_logs_in_as_a_specific_subject(bureau: Bureau) -> None:
    """Q6, D5: 特定主体登录 at the bureau of the project's province. First way: subject type,
    USCC/TIN, account, personal password, then SMS code or the APP's face check. Second way:
    the APP's face recognition alone on the specific-subject page."""
    legal_representative = bureau.register(Person("江苏法人"))
    handler = bureau.register(Person("钟经办"))
    code = new_uscc("32")  # a Jiangsu company
    bureau.new_enterprise(code, legal_representative, name="江苏路桥工程有限公司")
    project = "KQ370102202600101"
    bureau.record_project(code, project, "37", INSPECTION, handlers=(handler,))
    subject = {"subject_type": INSPECTION}

    # First way, by USCC, password and SMS code (the handler named in the report).
    session = bureau.login(handler, SPECIFIC_SUBJECT, subject_number=code, **subject)
    assert session.identity["entry"] == SPECIFIC_SUBJECT
    assert session.identity["project_number"] == project
    assert session.identity["enterprise_code"] == code
    # First way with the APP's face check instead of the SMS code (the legal representative).
    session = bureau.login_by_face(
        legal_representative, SPECIFIC_SUBJECT, subject_number=project, **subject
    )
    assert session.identity["project_number"] == project

    # Second way: face recognition in the APP, nothing typed but the subject.
    started = bureau.web.call(
        "AuthService.StartSubjectFaceLogin",
        {**subject, "subject_number": code, "province": bureau.province},
    )
    scanned = bureau.tax_app.scan(started["face"]["qr_payload"])
    assert scanned["identity_required"] is True
    passed = bureau.tax_app.submit(scanned, identity=handler.identity)["ticket"]
    assert passed["state"] == "TICKET_STATE_PASSED"
    proof = bureau.web.call("FaceService.GetTicket", {"ticket_id": passed["ticket_id"]})["ticket"][
        "proof"
    ]
    session = Session(
        bureau.web.call(
            "AuthService.CompleteLoginWithFace",
            {"challenge_id": started["challenge_id"], "proof": proof},
        )["session"]
    )
    assert session.person_id == handler.person_id
    assert session.identity["project_number"] == project

    # Somebody with no relation to the subject is refused.
    stranger = bureau.register(Person("路人甲"))
    bureau.start_login(stranger, SPECIFIC_SUBJECT, subject_number=code, **subject).expect(
        "RELATION_NOT_FOUND", RELATION_TEXT
    )


# --- Q8, Q9: two-way confirmation ----------------------------------------------------------


def test_q08_person_applies_for_authorization_and_the_legal_representative_confirms(
    bureau: Bureau,
) -> None:
    """Q8, F1(a): 账户中心—企业授权管理—申请企业授权; the legal representative or financial
    officer confirms at 企业业务—账户中心; the applicant is then bound."""
    legal_representative = bureau.register(Person("孔法人"))
    financial_officer = bureau.register(Person("曾财务"))
    code = new_uscc()
    bureau.new_enterprise(code, legal_representative, financial_officer, name="孔氏贸易有限公司")
    applicant = bureau.register(Person("申请人"))

    session = bureau.login(applicant)
    applied = bureau.web.call(
        "BindingService.ApplyForAuthorization",
        {"enterprise_code": code, "role": "ROLE_TAX_OFFICER"},
        token=session.token,
    )["relation"]
    assert applied["state"] == "RELATION_STATE_PENDING"
    assert applied["confirming_party"] == "CONFIRMING_PARTY_ENTERPRISE"
    bureau.start_login(applicant, ENTERPRISE, enterprise_code=code).expect(
        "RELATION_NOT_FOUND", RELATION_TEXT
    )
    # Nobody but the legal representative or the financial officer confirms it.
    bureau.confirm(session, applied["relation_id"]).expect(
        "NOT_AUTHORIZED_TO_CONFIRM", CONFIRMERS_TEXT
    )

    officer_session = bureau.login_by_face(financial_officer, ENTERPRISE, enterprise_code=code)
    listed = bureau.web.call(
        "BindingService.ListEnterpriseRelations",
        {"enterprise_code": code, "states": ["RELATION_STATE_PENDING"]},
        token=officer_session.token,
    )["relations"]
    (pending,) = [r for r in listed if r["relation_id"] == applied["relation_id"]]
    assert pending["masked_person_name"] == "申*人"
    confirmed = bureau.confirm(officer_session, applied["relation_id"])["relation"]
    assert confirmed["state"] == "RELATION_STATE_ACTIVE"

    enterprise = bureau.login(applicant, ENTERPRISE, enterprise_code=code)
    assert enterprise.identity["role"] == "ROLE_TAX_OFFICER"


def test_q09_legal_representative_adds_xiaoming_who_confirms_in_the_account_center(
    bureau: Bureau,
) -> None:
    """Q9, F1(b): the FAQ's example: 张总 of A 公司 adds 小明 as tax officer; the platform
    pushes the authorization to 小明, who logs in through 自然人业务 (here after registering
    only now) and confirms it; then 小明 uses the enterprise entry."""
    zhang = bureau.register(Person("张总"))
    code = new_uscc()
    bureau.new_enterprise(code, zhang, name="A公司")
    xiaoming = Person("王小明")

    zhang_session = bureau.login(zhang, ENTERPRISE, enterprise_code=code)
    added = bureau.web.call(
        "BindingService.AddPerson",
        {"enterprise_code": code, "person": xiaoming.identity, "role": "ROLE_TAX_OFFICER"},
        token=zhang_session.token,
    )["relation"]
    assert added["state"] == "RELATION_STATE_PENDING"
    assert added["confirming_party"] == "CONFIRMING_PARTY_PERSON"
    assert added["person_id"] == ""  # not registered yet

    bureau.start_login(xiaoming, ENTERPRISE, enterprise_code=code).expect(
        "USER_NOT_REGISTERED", NOT_REGISTERED_TEXT
    )
    bureau.register(xiaoming)
    bureau.start_login(xiaoming, ENTERPRISE, enterprise_code=code).expect(
        "RELATION_NOT_FOUND", RELATION_TEXT
    )
    session = bureau.login(xiaoming)
    (pending,) = bureau.pending(session)
    assert (pending["enterprise_name"], pending["role"]) == ("A公司", "ROLE_TAX_OFFICER")
    assert bureau.confirm(session, pending["relation_id"]).ok

    enterprise = bureau.login(xiaoming, ENTERPRISE, enterprise_code=code)
    assert enterprise.identity["enterprise_name"] == "A公司"
    assert enterprise.identity["role"] == "ROLE_TAX_OFFICER"
    listed = bureau.web.call(
        "BindingService.ListEnterpriseRelations",
        {"enterprise_code": code},
        token=zhang_session.token,
    )["relations"]
    (bound,) = [r for r in listed if r["relation_id"] == added["relation_id"]]
    assert (bound["state"], bound["person_id"]) == ("RELATION_STATE_ACTIVE", xiaoming.person_id)


# --- Q24: tax agents --------------------------------------------------------------------------


def test_q24_tax_agent_in_both_forms_registers_and_acts_for_the_client(bureau: Bureau) -> None:
    """Q24, F4, D6: the agency files the basic-information form (listing its agents) and an
    agreement form per client (naming the agents serving it); an agent in both registers,
    logs in through 代理业务 and acts for that client, and only for it."""
    client, other_client, agency = new_uscc(), new_uscc(), new_uscc()
    bureau.new_enterprise(client, bureau.register(Person("委托甲")), name="委托甲有限公司")
    bureau.new_enterprise(other_client, bureau.register(Person("委托乙")), name="委托乙有限公司")
    agent, listed_only = Person("代理人"), Person("仅登记")
    bureau.agency_forms(agency, (agent, listed_only), {client: (agent,)})
    bureau.register(agent)
    bureau.register(listed_only)

    session = bureau.login(agent, AGENT, agency_code=agency)
    assert (session.identity["entry"], session.identity["agency_code"]) == (AGENT, agency)
    clients = [i["client_code"] for i in bureau.identities(session) if i["entry"] == AGENT]
    assert client in clients
    assert other_client not in clients
    switched = _switch(bureau, session, entry=AGENT, agency_code=agency, client_code=client)
    identity = switched["session"]["identity"]
    assert (identity["client_code"], identity["client_name"]) == (client, "委托甲有限公司")
    assert identity["role"] == "ROLE_TAX_AGENT"
    _switch(bureau, session, entry=AGENT, agency_code=agency, client_code=other_client).expect(
        "RELATION_NOT_FOUND"
    )
    # Listed in the basic form only: no agent business.
    bureau.start_login(listed_only, AGENT, agency_code=agency).expect("RELATION_NOT_FOUND")


# --- Q27: identity switching -------------------------------------------------------------------


def test_q27_tax_officer_switches_between_enterprises_without_logging_out(
    bureau: Bureau,
) -> None:
    """Q27, F3: 【账户中心】-【身份切换】 lists the enterprises of the person and switches to
    another one in the same session, without logging out."""
    officer = bureau.register(Person("褚多企"))
    first, second, unrelated = new_uscc(), new_uscc(), new_uscc()
    for code, name in ((first, "甲企业有限公司"), (second, "乙企业有限公司")):
        manager = bureau.register(Person("卫法人"))
        bureau.new_enterprise(code, manager, name=name)
        bureau.add_tax_officer(code, manager, officer)
    bureau.new_enterprise(unrelated, bureau.register(Person("蒋法人")), name="丙企业有限公司")

    session = bureau.login(officer, ENTERPRISE, enterprise_code=first)
    listed = {i["enterprise_code"] for i in bureau.identities(session) if i["entry"] == ENTERPRISE}
    assert listed == {first, second}
    switched = Session(
        _switch(bureau, session, entry=ENTERPRISE, enterprise_code=second)["session"]
    )
    assert switched.body["session_id"] == session.body["session_id"]
    assert switched.identity["enterprise_name"] == "乙企业有限公司"
    assert switched.identity["role"] == "ROLE_TAX_OFFICER"
    # The new tokens work at once.
    assert bureau.identities(switched)
    _switch(bureau, switched, entry=ENTERPRISE, enterprise_code=unrelated).expect(
        "RELATION_NOT_FOUND", RELATION_TEXT
    )
    back = Session(_switch(bureau, switched, entry=ENTERPRISE, enterprise_code=first)["session"])
    assert back.identity["enterprise_code"] == first


# --- Q10: the old login (moves the clock past its closing date) ------------------------------


def test_q10_new_taxpayer_people_register_first_then_use_the_enterprise_entry(
    bureau: Bureau,
) -> None:
    """Q10, A2: 新办纳税人: the legal representative registers through 自然人业务 (用户注册),
    confirms the relation and then logs in through 企业业务."""
    newcomer = Person("新法人")
    code = new_uscc()
    bureau.core_tax.confirm_taxpayer_registration(code, "新办企业有限公司", newcomer)
    bureau.start_login(newcomer, ENTERPRISE, enterprise_code=code).expect(
        "USER_NOT_REGISTERED", NOT_REGISTERED_TEXT
    )
    bureau.register(newcomer)
    bureau.confirm_all_pending(newcomer)
    session = bureau.login(newcomer, ENTERPRISE, enterprise_code=code)
    assert session.identity["role"] == "ROLE_LEGAL_REPRESENTATIVE"


def test_q10_old_enterprise_login_works_until_its_announced_closing_date(
    bureau: Bureau, platform: Platform
) -> None:
    """Q10, D7: the old login (enterprise code + enterprise password) is kept for a
    transition period whose end is configured; after it, only the new login works."""
    legal_representative = bureau.register(Person("旧登录"))
    code = new_uscc()
    bureau.new_enterprise(code, legal_representative, name="老企业有限公司")
    bureau.hall.auth.ImportLegacyCredential(
        auth_pb2.ImportLegacyCredentialRequest(
            enterprise_code=code,
            legacy_password_hash=legacy_password_hash("OldEnterprise1"),
            person=legal_representative.document,
        ),
        timeout=10,
    )
    legacy = {"enterprise_code": code, "province": bureau.province}
    bureau.app.call("AuthService.LegacyLogin", {**legacy, "password": "wrong-one1"}).expect(
        "CREDENTIALS_INVALID"
    )
    session = Session(
        bureau.app.call("AuthService.LegacyLogin", {**legacy, "password": "OldEnterprise1"})[
            "session"
        ]
    )
    assert session.person_id == legal_representative.person_id
    assert session.identity["enterprise_code"] == code

    bureau.later(platform.legacy_login_closes_at - bureau.clock.now() + timedelta(seconds=1))
    bureau.app.call("AuthService.LegacyLogin", {**legacy, "password": "OldEnterprise1"}).expect(
        "LEGACY_LOGIN_CLOSED", "旧版登录方式已关闭，请使用新版登录"
    )
    new_login = bureau.login(legal_representative, ENTERPRISE, enterprise_code=code)
    assert new_login.identity["enterprise_code"] == code
