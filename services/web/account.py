"""The account center (账户中心) after login: profile and real-name level (B3), phones
(C3, C4), username (C2), password, 企业授权管理 (F1, F2), 身份切换 (F3, F4, F5) and
切换主管税务机关 (D5)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from etax_platform.errors import Reason
from services.web import codes, faces, labels
from services.web.platform import Identity, PersonIdentity, PlatformError
from services.web.web import Errors, Visit

_PHONE_FIELDS = {
    "phone": "phone",
    "code": "code",
    Reason.INVALID_PHONE.value: "phone",
    Reason.SMS_RATE_LIMITED.value: "phone",
    Reason.CODE_INVALID.value: "code",
    Reason.CODE_EXPIRED.value: "code",
    Reason.CODE_PURPOSE_MISMATCH.value: "code",
    Reason.CREDENTIALS_INVALID.value: "code",
}
_PASSWORD_FIELDS = {
    "old_password": "old_password",
    "new_password": "new_password",
    Reason.CREDENTIALS_INVALID.value: "old_password",
    Reason.PASSWORD_POLICY.value: "new_password",
}
_RELATION_FIELDS = {
    "enterprise_code": "enterprise_code",
    "person.document.number": "document_number",
    "person.document": "document_number",
    "person.name": "name",
    Reason.INVALID_ENTERPRISE_CODE.value: "enterprise_code",
    Reason.INVALID_DOCUMENT.value: "document_number",
}


# --- 个人信息管理 ---------------------------------------------------------------------------------


def profile_page(
    visit: Visit,
    *,
    section: str = "",
    values: dict[str, str] | None = None,
    errors: Errors | None = None,
    notice: str = "",
    status: int = 200,
) -> Response:
    profile = visit.with_token(lambda token: visit.platform.profile(visit.caller, token))
    flow = visit.session.get("flow:phone_add") or {}
    return visit.render(
        "account.html",
        status=status,
        profile=profile,
        section=section,
        values=values or {},
        errors=errors,
        notice=notice,
        face=faces.current(visit, "upgrade"),
        **codes.timers(flow),
    )


def account_page(visit: Visit) -> Response:
    return profile_page(visit)


def phone_send_code(visit: Visit) -> Response:
    values = {"phone": visit.value("phone"), "code": visit.value("code")}
    if not values["phone"]:
        errors = Errors(fields={"phone": "请输入手机号码"})
        return profile_page(visit, section="phones", values=values, errors=errors, status=400)
    flow: dict[str, Any] = visit.session.get("flow:phone_add") or {}
    try:
        sent = visit.platform.send_code(
            visit.caller, values["phone"], "VERIFICATION_PURPOSE_PHONE_ADD"
        )
    except PlatformError as error:
        if codes.refused(flow, error):
            visit.session["flow:phone_add"] = flow
        errors = Errors().add(error, _PHONE_FIELDS)
        return profile_page(visit, section="phones", values=values, errors=errors, status=400)
    flow["verification_id"] = sent.verification_id
    codes.sent(flow, sent.expires_at)
    visit.session["flow:phone_add"] = flow
    notice = f"验证码已发送至 {sent.masked_recipient}"
    return profile_page(visit, section="phones", values=values, notice=notice)


def phone_add(visit: Visit) -> Response:
    values = {"phone": visit.value("phone"), "code": visit.value("code")}
    flow: dict[str, Any] = visit.session.get("flow:phone_add") or {}
    if not flow.get("verification_id"):
        errors = Errors(fields={"code": "请先获取验证码"})
        return profile_page(visit, section="phones", values=values, errors=errors, status=400)
    try:
        added = visit.with_token(
            lambda token: visit.platform.add_phone(
                visit.caller,
                token,
                values["phone"],
                flow["verification_id"],
                values["code"],
                make_default=visit.value("make_default") == "1",
            )
        )
    except PlatformError as error:
        errors = Errors().add(error, _PHONE_FIELDS)
        return profile_page(visit, section="phones", values=values, errors=errors, status=400)
    visit.session.pop("flow:phone_add")
    visit.flash(f"已添加手机号码 {added.masked_number}")
    return visit.redirect("/account#phones")


def phone_remove(visit: Visit) -> Response:
    return _phone_change(visit, "remove", "已删除手机号码")


def phone_default(visit: Visit) -> Response:
    return _phone_change(visit, "default", "已设为默认手机号码")


def _phone_change(visit: Visit, action: str, done: str) -> Response:
    phone_id = visit.value("phone_id")
    try:
        if action == "remove":
            visit.with_token(lambda t: visit.platform.remove_phone(visit.caller, t, phone_id))
        else:
            visit.with_token(lambda t: visit.platform.set_default_phone(visit.caller, t, phone_id))
    except PlatformError as error:
        return profile_page(visit, section="phones", errors=Errors(form=error.text), status=400)
    visit.flash(done)
    return visit.redirect("/account#phones")


def username_set(visit: Visit) -> Response:
    username = visit.value("username")
    try:
        visit.with_token(lambda t: visit.platform.set_username(visit.caller, t, username))
    except PlatformError as error:
        errors = Errors().add(
            error,
            {
                "username": "username",
                Reason.USERNAME_TAKEN.value: "username",
                Reason.USERNAME_CHANGE_TOO_SOON.value: "username",
            },
        )
        return profile_page(
            visit, section="username", values={"username": username}, errors=errors, status=400
        )
    visit.flash("用户名已保存")
    return visit.redirect("/account#username-section")


def password_change(visit: Visit) -> Response:
    old, new = visit.form.get("old_password", ""), visit.form.get("new_password", "")
    if new != visit.form.get("new_password_confirm", ""):
        errors = Errors(fields={"new_password_confirm": labels.CONFIRMATION_DIFFERS})
        return profile_page(visit, section="password", errors=errors, status=400)
    try:
        visit.with_token(lambda t: visit.platform.change_password(visit.caller, t, old, new))
    except PlatformError as error:
        errors = Errors().add(error, _PASSWORD_FIELDS)
        return profile_page(visit, section="password", errors=errors, status=400)
    visit.flash("个人用户密码已修改")
    return visit.redirect("/account#password-section")


def real_name_start(visit: Visit) -> Response:
    try:
        face = visit.with_token(lambda t: visit.platform.start_real_name_upgrade(visit.caller, t))
    except PlatformError as error:
        return profile_page(visit, section="level", errors=Errors(form=error.text), status=400)
    faces.start(visit, "upgrade", face)
    return visit.redirect("/account#level")


@faces.completion("upgrade")
def _upgrade_passed(visit: Visit, stored: dict[str, Any], proof: str) -> dict[str, Any]:
    level = visit.with_token(
        lambda t: visit.platform.complete_real_name_upgrade(visit.caller, t, proof)
    )
    visit.flash(f"人脸识别认证通过，实名等级已提升为{level}级")
    return {"text": "认证通过", "redirect": "/account#level"}


# --- 企业授权管理 (F1, F2) ------------------------------------------------------------------------


def _manages(identity: Identity) -> bool:
    return identity.entry == "ENTRY_ENTERPRISE" and identity.role in labels.MANAGER_ROLES


def relations_page(
    visit: Visit,
    *,
    values: dict[str, str] | None = None,
    errors: Errors | None = None,
    section: str = "",
    status: int = 200,
) -> Response:
    signed_in = visit.signed_in
    assert signed_in is not None
    pending = visit.with_token(lambda t: visit.platform.pending_confirmations(visit.caller, t))
    enterprise: list[Any] = []
    if _manages(signed_in.identity):
        code = signed_in.identity.enterprise_code
        enterprise = visit.with_token(
            lambda t: visit.platform.enterprise_relations(visit.caller, t, code)
        )
    return visit.render(
        "relations.html",
        status=status,
        pending=pending,
        manages=_manages(signed_in.identity),
        enterprise_relations=enterprise,
        values=values or {},
        errors=errors,
        section=section,
    )


def relations(visit: Visit) -> Response:
    return relations_page(visit)


def apply(visit: Visit) -> Response:
    values = {"enterprise_code": visit.value("enterprise_code"), "role": visit.value("role")}
    if not values["enterprise_code"]:
        errors = Errors(fields={"enterprise_code": "请输入统一社会信用代码/纳税人识别号"})
        return relations_page(visit, values=values, errors=errors, section="apply", status=400)
    try:
        visit.with_token(
            lambda t: visit.platform.apply_for_authorization(
                visit.caller, t, values["enterprise_code"], values["role"] or "ROLE_TAX_OFFICER"
            )
        )
    except PlatformError as error:
        errors = Errors().add(error, _RELATION_FIELDS)
        return relations_page(visit, values=values, errors=errors, section="apply", status=400)
    visit.flash("已提交申请，请等待企业法定代表人或财务负责人确认")
    return visit.redirect("/account/relations")


def add_person(visit: Visit) -> Response:
    signed_in = visit.signed_in
    assert signed_in is not None
    names = ("document_type", "document_number", "name", "role")
    values = {name: visit.value(name) for name in names}
    errors = Errors()
    for name, text in (("document_number", "请输入证件号码"), ("name", "请输入姓名")):
        if not values[name]:
            errors.fields[name] = text
    if errors:
        return relations_page(visit, values=values, errors=errors, section="add", status=400)
    person = PersonIdentity(values["document_type"], values["document_number"], values["name"])
    try:
        visit.with_token(
            lambda t: visit.platform.add_person(
                visit.caller,
                t,
                signed_in.identity.enterprise_code,
                person,
                values["role"] or "ROLE_TAX_OFFICER",
            )
        )
    except PlatformError as error:
        errors = Errors().add(error, _RELATION_FIELDS)
        return relations_page(visit, values=values, errors=errors, section="add", status=400)
    visit.flash("已添加，等待该人员在账户中心确认")
    return visit.redirect("/account/relations")


def decide(visit: Visit) -> Response:
    relation_id = visit.value("relation_id")
    accept = visit.value("decision") == "accept"
    try:
        visit.with_token(
            lambda t: visit.platform.decide_relation(visit.caller, t, relation_id, accept=accept)
        )
    except PlatformError as error:
        return relations_page(visit, errors=Errors(form=error.text), status=400)
    visit.flash("已确认授权，关联关系已绑定" if accept else "已拒绝该授权")
    return visit.redirect("/account/relations")


# --- 身份切换 (F3, F4, F5) and 切换主管税务机关 (D5) ----------------------------------------------


def identities_page(visit: Visit, errors: Errors | None = None, status: int = 200) -> Response:
    listed = visit.with_token(lambda t: visit.platform.identities(visit.caller, t))
    visit.session["identities"] = [i.to_json() for i in listed]
    return visit.render("identities.html", identities=listed, errors=errors, status=status)


def switch(visit: Visit) -> Response:
    """One click, no logout: new tokens for the same platform session."""
    back = (
        visit.value("back")
        if visit.value("back") in ("identities", "authorities")
        else "identities"
    )
    listed = [Identity.from_json(i) for i in visit.session.get(back, []) or []]
    key = visit.value("key")
    chosen = next((i for i in listed if i.key == key), None)
    if chosen is None:
        return visit.redirect(f"/account/{_page_of(back)}")
    try:
        switched = visit.with_token(
            lambda t: visit.platform.switch_identity(visit.caller, t, chosen)
        )
    except PlatformError as error:
        if back == "authorities":
            return authorities_page(visit, Errors(form=error.text), 400)
        return identities_page(visit, Errors(form=error.text), 400)
    visit.replace_login(switched)
    visit.flash(f"已切换为：{labels.identity_title(switched.identity)}")
    return visit.redirect("/account")


def _page_of(back: str) -> str:
    return "tax-authorities" if back == "authorities" else "identities"


def authorities_page(visit: Visit, errors: Errors | None = None, status: int = 200) -> Response:
    projects = visit.with_token(lambda t: visit.platform.related_projects(visit.caller, t))
    listed = [p.as_identity() for p in projects]
    visit.session["authorities"] = [i.to_json() for i in listed]
    return visit.render(
        "authorities.html",
        projects=list(zip(projects, listed, strict=True)),
        errors=errors,
        status=status,
    )
