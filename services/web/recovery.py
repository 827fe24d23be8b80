"""忘记密码 (C5, Q16, Q17), 找回手机号码 (C6, Q5, Q22) and the face self-unlock (E1, Q12):
what a person who cannot log in does from the login page."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from etax_platform.errors import MEANINGS, Reason
from services.web import codes, faces, labels
from services.web.platform import PlatformError
from services.web.web import Errors, Visit

_FIELDS = {
    "account": "account",
    "password": "password",
    "new_password": "new_password",
    "phone": "phone",
    "code": "code",
    Reason.USER_NOT_REGISTERED.value: "account",
    Reason.PHONE_NOT_FOUND.value: "account",
    Reason.CREDENTIALS_INVALID.value: "password",
    Reason.PASSWORD_POLICY.value: "new_password",
    Reason.INVALID_PHONE.value: "phone",
    Reason.CODE_INVALID.value: "code",
    Reason.CODE_EXPIRED.value: "code",
    Reason.CODE_PURPOSE_MISMATCH.value: "code",
}


def _code_fields(error: PlatformError, code_field: str = "code") -> dict[str, str]:
    fields = dict(_FIELDS)
    if error.reason == Reason.CREDENTIALS_INVALID.value:
        fields[Reason.CREDENTIALS_INVALID.value] = code_field
    return fields


# --- 忘记密码 ---------------------------------------------------------------------------------


def reset_page(
    visit: Visit,
    values: dict[str, str] | None = None,
    errors: Errors | None = None,
    status: int = 200,
) -> Response:
    return visit.render("reset.html", values=values or {}, errors=errors, status=status)


def reset_start(visit: Visit) -> Response:
    account = visit.value("account")
    if not account:
        return reset_page(
            visit,
            errors=Errors(fields={"account": "请输入居民身份证号码/手机号码/用户名"}),
            status=400,
        )
    try:
        started = visit.platform.start_password_reset(visit.caller, account)
    except PlatformError as error:
        return reset_page(visit, {"account": account}, Errors().add(error, _FIELDS), 400)
    visit.session["flow:reset"] = {
        "reset_id": started.reset_id,
        "masked_phone": started.masked_phone,
        "phone_empty": started.phone_empty,
        "masked_email": started.masked_email,
        "face_proof": "",
    }
    visit.session.pop("face:reset")
    return visit.redirect("/password-reset/verify")


def _reset_flow(visit: Visit) -> dict[str, Any] | None:
    found: dict[str, Any] | None = visit.session.get("flow:reset")
    return found


def _reset_code_step(flow: dict[str, Any]) -> str:
    """The code step: "sms" to the phone, "email" (B6: an overseas person without a
    phone), or "" (the phone is empty: face only, D4)."""
    if not flow["phone_empty"]:
        return "sms"
    return "email" if flow.get("masked_email") else ""


def reset_verify_page(
    visit: Visit, errors: Errors | None = None, status: int = 200, notice: str = ""
) -> Response:
    flow = _reset_flow(visit)
    if flow is None:
        return visit.redirect("/password-reset")
    face = faces.current(visit, "reset")
    asked = visit.request.query_params.get("step", "")
    code_step = _reset_code_step(flow)
    if flow["face_proof"] or face is not None or not code_step:
        chosen = code_step if code_step and asked == code_step else "face"
    else:
        chosen = asked if asked in (code_step, "face") else code_step
    return visit.render(
        "reset_verify.html",
        status=status,
        flow=flow,
        face=face,
        chosen=chosen,
        code_step=code_step,
        channel=labels.CODE_CHANNELS.get(code_step, {}),
        masked_contact=flow["masked_phone"] if code_step == "sms" else flow.get("masked_email", ""),
        errors=errors,
        notice=notice,
        phone_empty_text=MEANINGS[Reason.PHONE_EMPTY].text if not code_step else "",
        **codes.timers(flow),
    )


def reset_send_code(visit: Visit) -> Response:
    flow = _reset_flow(visit)
    if flow is None:
        return visit.redirect("/password-reset")
    try:
        sent = visit.platform.send_password_reset_code(visit.caller, flow["reset_id"])
    except PlatformError as error:
        if codes.refused(flow, error):
            visit.session["flow:reset"] = flow
        return reset_verify_page(visit, Errors(fields={"code": error.text}), 400)
    codes.sent(flow, sent.expires_at)
    visit.session["flow:reset"] = flow
    return reset_verify_page(visit, notice=f"验证码已发送至 {sent.masked_recipient}")


def reset_face(visit: Visit) -> Response:
    flow = _reset_flow(visit)
    if flow is None:
        return visit.redirect("/password-reset")
    try:
        face = visit.platform.start_password_reset_face(visit.caller, flow["reset_id"])
    except PlatformError as error:
        return reset_verify_page(visit, Errors(form=error.text), 400)
    faces.start(visit, "reset", face, reset_id=flow["reset_id"])
    return visit.redirect("/password-reset/verify?step=face")


@faces.completion("reset")
def _reset_face_passed(visit: Visit, stored: dict[str, Any], proof: str) -> dict[str, Any]:
    flow = _reset_flow(visit)
    if flow is None or flow["reset_id"] != stored["reset_id"]:
        return {"text": "操作已失效，请重新开始", "redirect": "/password-reset"}
    flow["face_proof"] = proof
    visit.session["flow:reset"] = flow
    return {"text": "人脸识别已通过，请设置新密码", "redirect": "/password-reset/verify?step=face"}


def reset_complete(visit: Visit) -> Response:
    flow = _reset_flow(visit)
    if flow is None:
        return visit.redirect("/password-reset")
    by_face = visit.value("method") == "face"
    new_password = visit.form.get("new_password", "")
    errors = Errors()
    if by_face and not flow["face_proof"]:
        errors.form = "请先完成人脸识别"
    if not by_face and not visit.value("code"):
        channel = labels.CODE_CHANNELS.get(_reset_code_step(flow), labels.CODE_CHANNELS["sms"])
        errors.fields["code"] = f"请输入{channel['code']}"
    if new_password != visit.form.get("new_password_confirm", ""):
        errors.fields["new_password_confirm"] = labels.CONFIRMATION_DIFFERS
    if errors:
        return reset_verify_page(visit, errors, 400)
    try:
        visit.platform.complete_password_reset(
            visit.caller,
            flow["reset_id"],
            new_password,
            code=visit.value("code"),
            face_proof=flow["face_proof"] if by_face else "",
        )
    except PlatformError as error:
        return reset_verify_page(visit, Errors().add(error, _code_fields(error)), 400)
    visit.session.pop("flow:reset")
    return visit.render("done.html", title="忘记密码", message="密码已重置，请使用新密码登录。")


# --- 找回手机号码 -------------------------------------------------------------------------------


def recovery_page(
    visit: Visit,
    values: dict[str, str] | None = None,
    errors: Errors | None = None,
    status: int = 200,
) -> Response:
    return visit.render("recovery.html", values=values or {}, errors=errors, status=status)


def recovery_start(visit: Visit) -> Response:
    account = visit.value("account")
    errors = Errors()
    if not account:
        errors.fields["account"] = "请输入居民身份证号码/手机号码/用户名"
    if not visit.form.get("password"):
        errors.fields["password"] = labels.REQUIRED["password"]
    if errors:
        return recovery_page(visit, {"account": account}, errors, 400)
    try:
        recovery_id = visit.platform.start_phone_recovery(
            visit.caller, account, visit.form["password"]
        )
    except PlatformError as error:
        return recovery_page(visit, {"account": account}, Errors().add(error, _FIELDS), 400)
    visit.session["flow:recovery"] = {"recovery_id": recovery_id}
    return visit.redirect("/phone-recovery/phone")


def _recovery_flow(visit: Visit) -> dict[str, Any] | None:
    found: dict[str, Any] | None = visit.session.get("flow:recovery")
    return found


def recovery_phone_page(
    visit: Visit,
    values: dict[str, str] | None = None,
    errors: Errors | None = None,
    status: int = 200,
    notice: str = "",
) -> Response:
    flow = _recovery_flow(visit)
    if flow is None:
        return visit.redirect("/phone-recovery")
    return visit.render(
        "recovery_phone.html",
        status=status,
        values=values or {},
        errors=errors,
        notice=notice,
        **codes.timers(flow),
    )


def recovery_send_code(visit: Visit) -> Response:
    flow = _recovery_flow(visit)
    if flow is None:
        return visit.redirect("/phone-recovery")
    values = {"phone": visit.value("phone"), "code": visit.value("code")}
    if not values["phone"]:
        return recovery_phone_page(visit, values, Errors(fields={"phone": "请输入新手机号码"}), 400)
    try:
        sent = visit.platform.send_code(
            visit.caller, values["phone"], "VERIFICATION_PURPOSE_PHONE_RECOVERY"
        )
    except PlatformError as error:
        if codes.refused(flow, error):
            visit.session["flow:recovery"] = flow
        fields = {**_FIELDS, Reason.SMS_RATE_LIMITED.value: "phone"}
        return recovery_phone_page(visit, values, Errors().add(error, fields), 400)
    flow["verification_id"] = sent.verification_id
    codes.sent(flow, sent.expires_at)
    visit.session["flow:recovery"] = flow
    return recovery_phone_page(visit, values, notice=f"验证码已发送至 {sent.masked_recipient}")


def recovery_complete(visit: Visit) -> Response:
    flow = _recovery_flow(visit)
    if flow is None:
        return visit.redirect("/phone-recovery")
    values = {"phone": visit.value("phone"), "code": visit.value("code")}
    if not flow.get("verification_id"):
        return recovery_phone_page(visit, values, Errors(fields={"code": "请先获取验证码"}), 400)
    try:
        masked = visit.platform.complete_phone_recovery(
            visit.caller,
            flow["recovery_id"],
            values["phone"],
            flow["verification_id"],
            values["code"],
        )
    except PlatformError as error:
        return recovery_phone_page(visit, values, Errors().add(error, _code_fields(error)), 400)
    visit.session.pop("flow:recovery")
    return visit.render(
        "done.html",
        title="找回手机号码",
        message=f"手机号码已更新为 {masked}，原手机号码不再用于登录和接收验证码。",
    )


# --- 刷脸解锁 (E1) -------------------------------------------------------------------------------


def unlock_page(
    visit: Visit,
    values: dict[str, str] | None = None,
    errors: Errors | None = None,
    status: int = 200,
) -> Response:
    return visit.render(
        "unlock.html",
        values=values or {},
        errors=errors,
        status=status,
        face=faces.current(visit, "unlock"),
    )


def unlock_start(visit: Visit) -> Response:
    account = visit.value("account")
    if not account:
        return unlock_page(
            visit,
            errors=Errors(fields={"account": "请输入居民身份证号码/手机号码/用户名"}),
            status=400,
        )
    try:
        unlock_id, face = visit.platform.start_face_unlock(visit.caller, account)
    except PlatformError as error:
        return unlock_page(visit, {"account": account}, Errors().add(error, _FIELDS), 400)
    faces.start(visit, "unlock", face, unlock_id=unlock_id)
    return visit.redirect("/unlock")


@faces.completion("unlock")
def _unlock_face_passed(visit: Visit, stored: dict[str, Any], proof: str) -> dict[str, Any]:
    visit.platform.complete_face_unlock(visit.caller, stored["unlock_id"], proof)
    visit.flash("刷脸认证通过，已解锁，请重新登录")
    return {"text": "已解锁", "redirect": "/"}
