"""用户注册 (B1-B6): document type and identity check, then face by QR (unless the hall
collected the person), phone (or, overseas, email) by code, and the password (C1)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from etax_platform.errors import Reason
from services.web import codes, faces, labels
from services.web.platform import PersonIdentity, PlatformError
from services.web.web import Errors, Visit

_IDENTITY_FIELDS = {
    "identity.document.type": "document_type",
    "identity.document.number": "document_number",
    "identity.document": "document_number",
    "identity.name": "name",
    Reason.INVALID_DOCUMENT.value: "document_number",
}
_DETAIL_FIELDS = {
    "phone": "contact",
    "email": "contact",
    "code": "code",
    "password": "password",
    "username": "username",
    "verification_id": "code",
    Reason.INVALID_PHONE.value: "contact",
    Reason.INVALID_EMAIL.value: "contact",
    Reason.SMS_RATE_LIMITED.value: "contact",
    Reason.CODE_INVALID.value: "code",
    Reason.CODE_EXPIRED.value: "code",
    Reason.CODE_PURPOSE_MISMATCH.value: "code",
    Reason.CREDENTIALS_INVALID.value: "code",
    Reason.PASSWORD_POLICY.value: "password",
    Reason.USERNAME_TAKEN.value: "username",
}


def start_page(visit: Visit) -> Response:
    return _render_start(visit, overseas=visit.request.url.path.endswith("/overseas"))


def _render_start(
    visit: Visit,
    *,
    overseas: bool,
    values: dict[str, str] | None = None,
    errors: Errors | None = None,
    status: int = 200,
) -> Response:
    return visit.render(
        "register.html",
        status=status,
        overseas=overseas,
        values=values or {},
        errors=errors,
        online=labels.OVERSEAS_DOCUMENTS if overseas else labels.ONLINE_DOCUMENTS,
        hall_first={} if overseas else labels.HALL_FIRST_DOCUMENTS,
    )


def start_submit(visit: Visit) -> Response:
    overseas = visit.request.url.path.endswith("/overseas")
    values = {name: visit.value(name) for name in ("document_type", "document_number", "name")}
    errors = Errors()
    for name, text in (
        ("document_number", "请输入证件号码"),
        ("name", "请输入姓名"),
        ("document_type", "请选择证件类型"),
    ):
        if not values[name]:
            errors.fields[name] = text
    if errors:
        return _render_start(visit, overseas=overseas, values=values, errors=errors, status=400)
    person = PersonIdentity(values["document_type"], values["document_number"], values["name"])
    try:
        started = visit.platform.start_registration(visit.caller, person, overseas=overseas)
    except PlatformError as error:
        errors.add(error, _IDENTITY_FIELDS)
        return _render_start(visit, overseas=overseas, values=values, errors=errors, status=400)
    visit.session["flow:registration"] = {
        "registration_id": started.registration_id,
        "face_required": started.face_required,
        "email_required": started.email_required,
        "face_proof": "",
    }
    visit.session.pop("face:registration")
    return visit.redirect("/register/details")


def _flow(visit: Visit) -> dict[str, Any] | None:
    found: dict[str, Any] | None = visit.session.get("flow:registration")
    return found


def details_page(
    visit: Visit,
    values: dict[str, str] | None = None,
    errors: Errors | None = None,
    status: int = 200,
    notice: str = "",
) -> Response:
    flow = _flow(visit)
    if flow is None:
        return visit.redirect("/register")
    return visit.render(
        "register_details.html",
        status=status,
        flow=flow,
        face=faces.current(visit, "registration"),
        values=values or {},
        errors=errors,
        notice=notice,
        **codes.timers(flow),
    )


def start_face(visit: Visit) -> Response:
    flow = _flow(visit)
    if flow is None:
        return visit.redirect("/register")
    try:
        face = visit.platform.start_registration_face(visit.caller, flow["registration_id"])
    except PlatformError as error:
        return details_page(visit, errors=Errors(form=error.text), status=400)
    faces.start(visit, "registration", face, registration_id=flow["registration_id"])
    return visit.redirect("/register/details#face")


@faces.completion("registration")
def _face_passed(visit: Visit, stored: dict[str, Any], proof: str) -> dict[str, Any]:
    flow = _flow(visit)
    if flow is None or flow["registration_id"] != stored["registration_id"]:
        return {"text": "注册已失效，请重新开始", "redirect": "/register"}
    flow["face_proof"] = proof
    visit.session["flow:registration"] = flow
    return {"text": "人脸识别已通过", "redirect": "/register/details#contact"}


def _detail_values(visit: Visit) -> dict[str, str]:
    return {name: visit.value(name) for name in ("contact", "code", "username")}


def send_code(visit: Visit) -> Response:
    flow = _flow(visit)
    if flow is None:
        return visit.redirect("/register")
    values = _detail_values(visit)
    if not values["contact"]:
        text = "请输入邮箱地址" if flow["email_required"] else "请输入手机号码"
        return details_page(visit, values, Errors(fields={"contact": text}), 400)
    try:
        sent = visit.platform.send_code(
            visit.caller, values["contact"], "VERIFICATION_PURPOSE_REGISTRATION"
        )
    except PlatformError as error:
        if codes.refused(flow, error):
            visit.session["flow:registration"] = flow
        return details_page(visit, values, Errors().add(error, _DETAIL_FIELDS), 400)
    flow["verification_id"] = sent.verification_id
    codes.sent(flow, sent.expires_at)
    visit.session["flow:registration"] = flow
    return details_page(visit, values, notice=f"验证码已发送至 {sent.masked_recipient}")


def complete(visit: Visit) -> Response:
    flow = _flow(visit)
    if flow is None:
        return visit.redirect("/register")
    values = _detail_values(visit)
    password = visit.form.get("password", "")
    errors = Errors()
    if flow["face_required"] and not flow["face_proof"]:
        errors.form = "请先完成人脸识别认证"
    if not flow.get("verification_id"):
        errors.fields["code"] = "请先获取验证码"
    if password != visit.form.get("password_confirm", ""):
        errors.fields["password_confirm"] = labels.CONFIRMATION_DIFFERS
    if errors:
        return details_page(visit, values, errors, 400)
    try:
        level = visit.platform.complete_registration(
            visit.caller,
            flow["registration_id"],
            contact=values["contact"],
            verification_id=flow["verification_id"],
            code=values["code"],
            face_proof=flow["face_proof"],
            password=password,
            username=values["username"],
        )
    except PlatformError as error:
        return details_page(visit, values, Errors().add(error, _DETAIL_FIELDS), 400)
    visit.session.pop("flow:registration")
    return visit.render("register_done.html", level=level)
