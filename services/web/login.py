"""The login page (网页版登录界面): QR login on the left (D3), the entries on the right
(企业业务 / 自然人业务 / 代理业务, and 特定主体 under 企业业务, D1, D5), then step 2 by SMS
code or scan verification (D2, D4), and logging out."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from starlette.responses import Response

from etax_platform.errors import MEANINGS, Reason
from services.web import faces, labels
from services.web.platform import LoginStart, LoginTarget, PlatformError, SignedIn
from services.web.web import Errors, SessionEnded, Visit

SMS = "SECOND_STEP_SMS_CODE"
SCAN = "SECOND_STEP_SCAN_VERIFICATION"
# Step 2 is chosen from what the platform offers (second_steps), in this order; a step
# the page does not know yet is left out. Kind "code": a code to the masked contact.
STEPS: dict[str, dict[str, str]] = {
    SMS: {"key": "sms", "label": "短信验证", "kind": "code"},
    SCAN: {"key": "scan", "label": "扫码验证", "kind": "scan"},
}
QR_LOGIN_TEXTS = {
    "waiting": "请使用已登录的税务 APP 扫描二维码",
    "expired": "二维码已失效，请点击刷新",
    "collected": "二维码已使用，请刷新",
}
# Which field a refusal is about, by the platform's field name or its reason.
_LOGIN_FIELDS = {
    "account": "account",
    "password": "password",
    "enterprise_code": "enterprise_code",
    "agency_code": "agency_code",
    "subject_number": "subject_number",
    "subject_type": "subject_type",
    Reason.CREDENTIALS_INVALID.value: "password",
    Reason.PHONE_NOT_FOUND.value: "account",
    Reason.USER_NOT_REGISTERED.value: "account",
    Reason.INVALID_ENTERPRISE_CODE.value: "enterprise_code",
}
_RELATION_FIELD = {
    "enterprise": "enterprise_code",
    "agent": "agency_code",
    "subject": "subject_number",
}


def _entry_key(raw: str) -> str:
    return raw if raw in labels.ENTRIES else "enterprise"


def _ms(seconds_from_now: float) -> int:
    return int((time.time() + seconds_from_now) * 1000)


# --- the login page --------------------------------------------------------------------------


def login_page(visit: Visit) -> Response:
    if visit.signed_in is not None:
        return visit.redirect("/account")
    entry = _entry_key(visit.request.query_params.get("entry", ""))
    if visit.request.query_params.get("signed_out"):
        visit.flash("您已安全退出")
    return _render_login(visit, entry, {}, Errors())


def _qr_login(visit: Visit, *, renew: bool = False) -> dict[str, Any] | None:
    """The QR login ticket this browser shows (a new one when missing or expired)."""
    stored: dict[str, Any] | None = visit.session.get("qr_login")
    if stored and not renew and stored["expires_ms"] > _ms(5):
        return stored
    try:
        qr_login_id, payload, expires_at = visit.platform.create_qr_login(visit.caller)
    except PlatformError:
        return None
    stored = {
        "id": qr_login_id,
        "payload": payload,
        "expires_ms": int(expires_at.timestamp() * 1000) if expires_at else _ms(120),
        "version": int(time.time() * 1000),
    }
    visit.session["qr_login"] = stored
    faces.remember_qr(visit, "qr_login", payload)
    return stored


def _render_login(
    visit: Visit, entry: str, values: dict[str, str], errors: Errors, status: int = 200
) -> Response:
    return visit.render(
        "login.html",
        status=status,
        entry=entry,
        entry_title=labels.ENTRIES[entry][1],
        values=values,
        errors=errors,
        qr_login=_qr_login(visit),
    )


def login_submit(visit: Visit) -> Response:
    entry = _entry_key(visit.value("entry"))
    values = {
        name: visit.value(name)
        for name in ("account", "enterprise_code", "agency_code", "subject_type", "subject_number")
    }
    errors = Errors()
    if not values["account"]:
        errors.fields["account"] = "请输入居民身份证号码/手机号码/用户名"
    if not visit.form.get("password"):
        errors.fields["password"] = labels.REQUIRED["password"]
    required = {
        "enterprise": "enterprise_code",
        "agent": "agency_code",
        "subject": "subject_number",
    }
    if entry in required and not values[required[entry]]:
        errors.fields[required[entry]] = "此项为必填项"
    if errors:
        return _render_login(visit, entry, values, errors, 400)
    target = LoginTarget(
        entry=labels.ENTRIES[entry][0],
        enterprise_code=values["enterprise_code"] if entry == "enterprise" else "",
        agency_code=values["agency_code"] if entry == "agent" else "",
        subject_type=values["subject_type"] if entry == "subject" else "",
        subject_number=values["subject_number"] if entry == "subject" else "",
    )
    try:
        started = visit.platform.start_login(
            visit.caller, target, values["account"], visit.form.get("password", "")
        )
    except PlatformError as error:
        fields = dict(_LOGIN_FIELDS)
        if entry in _RELATION_FIELD:
            fields[Reason.RELATION_NOT_FOUND.value] = _RELATION_FIELD[entry]
        return _render_login(visit, entry, values, errors.add(error, fields), 400)
    _start_step_two(visit, entry, started)
    return visit.redirect("/login/verify")


def _start_step_two(visit: Visit, entry: str, started: LoginStart) -> None:
    visit.session["flow:login"] = {
        "challenge_id": started.challenge_id,
        "entry": entry,
        "second_steps": list(started.second_steps),
        "masked_phone": started.masked_phone,
        "phone_empty": started.phone_empty,
    }
    visit.session.pop("face:login")


def subject_search(visit: Visit) -> Response:
    """D5: the subject number's fuzzy search (nothing is found until the platform offers
    a search on the login challenge; the page's hook is in place)."""
    flow = visit.session.get("flow:login") or {}
    found = visit.platform.search_login_subjects(
        visit.caller,
        str(flow.get("challenge_id", "")),
        visit.value("subject_type"),
        visit.value("query"),
    )
    return visit.json(
        {"subjects": [{"number": p.project_number, "name": p.enterprise_name} for p in found[:10]]}
    )


# --- step 2 ---------------------------------------------------------------------------------


def _steps(flow: dict[str, Any]) -> list[dict[str, str]]:
    return [STEPS[s] for s in STEPS if s in flow["second_steps"]]


def verify_page(visit: Visit, errors: Errors | None = None, status: int = 200) -> Response:
    flow: dict[str, Any] | None = visit.session.get("flow:login")
    if flow is None:
        return visit.redirect("/")
    steps = _steps(flow)
    keys = [s["key"] for s in steps]
    asked = visit.request.query_params.get("step", "")
    face = faces.current(visit, "login")
    if face is not None and face.get("challenge_id") != flow["challenge_id"]:
        face = None
    chosen = asked if asked in keys else ("scan" if face else (keys[0] if keys else ""))
    wait = max(0, int((flow.get("send_wait_until_ms", 0) - _ms(0)) / 1000))
    code_left = max(0, int((flow.get("code_expires_ms", 0) - _ms(0)) / 1000))
    return visit.render(
        "verify.html",
        status=status,
        flow=flow,
        steps=steps,
        chosen=chosen,
        face=face,
        entry_title=labels.ENTRIES[flow["entry"]][1],
        phone_empty_text=MEANINGS[Reason.PHONE_EMPTY].text if flow["phone_empty"] else "",
        wait_seconds=wait,
        code_seconds=code_left,
        errors=errors,
    )


def send_code(visit: Visit) -> Response:
    flow: dict[str, Any] | None = visit.session.get("flow:login")
    if flow is None:
        return visit.redirect("/")
    errors = Errors()
    try:
        sent = visit.platform.send_login_code(visit.caller, flow["challenge_id"])
    except PlatformError as error:
        if error.retry_after is not None:
            # E2: the button waits as long as the platform says (RetryInfo).
            flow["send_wait_until_ms"] = _ms(error.retry_after.total_seconds())
        errors.add(error, {Reason.SMS_RATE_LIMITED.value: "code"})
    else:
        flow["code_sent_to"] = sent.masked_recipient
        flow["code_expires_ms"] = (
            int(sent.expires_at.timestamp() * 1000) if sent.expires_at else _ms(300)
        )
        flow.pop("send_wait_until_ms", None)
    visit.session["flow:login"] = flow
    if errors:
        return verify_page(visit, errors, 400)
    return visit.redirect("/login/verify?step=sms")


def complete_with_code(visit: Visit) -> Response:
    flow: dict[str, Any] | None = visit.session.get("flow:login")
    if flow is None:
        return visit.redirect("/")
    code = visit.value("code")
    if not code:
        return verify_page(visit, Errors(fields={"code": "请输入短信验证码"}), 400)
    try:
        signed_in = visit.platform.complete_login_with_code(
            visit.caller, flow["challenge_id"], code
        )
    except PlatformError as error:
        return verify_page(
            visit,
            Errors().add(
                error,
                {
                    Reason.CREDENTIALS_INVALID.value: "code",
                    Reason.CODE_INVALID.value: "code",
                    Reason.CODE_EXPIRED.value: "code",
                },
            ),
            400,
        )
    return _signed_in(visit, signed_in)


def start_face(visit: Visit) -> Response:
    flow: dict[str, Any] | None = visit.session.get("flow:login")
    if flow is None:
        return visit.redirect("/")
    try:
        face = visit.platform.start_login_face(visit.caller, flow["challenge_id"])
    except PlatformError as error:
        return verify_page(visit, Errors(form=error.text), 400)
    faces.start(visit, "login", face, challenge_id=flow["challenge_id"])
    return visit.redirect("/login/verify?step=scan")


def _signed_in(visit: Visit, signed_in: SignedIn) -> Response:
    visit.sign_in(signed_in)
    return visit.redirect("/account")


@faces.completion("login")
def _login_face_passed(visit: Visit, stored: dict[str, Any], proof: str) -> dict[str, Any]:
    signed_in = visit.platform.complete_login_with_face(visit.caller, stored["challenge_id"], proof)
    visit.sign_in(signed_in)
    return {"text": "验证通过，正在登录…", "redirect": "/account"}


# --- D5 second way: APP face alone ------------------------------------------------------------


def subject_face_start(visit: Visit) -> Response:
    values = {name: visit.value(name) for name in ("subject_type", "subject_number")}
    if not values["subject_number"]:
        errors = Errors(fields={"subject_number": "此项为必填项"})
        return _render_login(visit, "subject", values, errors, 400)
    try:
        challenge_id, face = visit.platform.start_subject_face_login(
            visit.caller, values["subject_type"], values["subject_number"]
        )
    except PlatformError as error:
        errors = Errors().add(
            error,
            {
                "subject_number": "subject_number",
                "subject_type": "subject_type",
                Reason.RELATION_NOT_FOUND.value: "subject_number",
            },
        )
        return _render_login(visit, "subject", values, errors, 400)
    faces.start(visit, "subject", face, challenge_id=challenge_id, **values)
    return visit.redirect("/login/subject-face")


def subject_face_page(visit: Visit) -> Response:
    face = faces.current(visit, "subject")
    if face is None:
        return visit.redirect("/?entry=subject")
    return visit.render("subject_face.html", face=face)


@faces.completion("subject")
def _subject_face_passed(visit: Visit, stored: dict[str, Any], proof: str) -> dict[str, Any]:
    signed_in = visit.platform.complete_login_with_face(visit.caller, stored["challenge_id"], proof)
    visit.sign_in(signed_in)
    return {"text": "验证通过，正在登录…", "redirect": "/account"}


# --- QR login (扫码登录, D3) -------------------------------------------------------------------


def qr_login_image(visit: Visit) -> Response:
    stored = visit.session.get("qr_login")
    if not stored:
        return Response(status_code=404)
    return faces.svg(stored["payload"], "扫码登录二维码")


def qr_login_poll(visit: Visit) -> Response:
    stored: dict[str, Any] | None = visit.session.get("qr_login")
    if not stored:
        return visit.json({"state": "expired", "text": QR_LOGIN_TEXTS["expired"]})
    try:
        found = visit.platform.get_qr_login(visit.caller, stored["id"])
    except PlatformError as error:
        return visit.json({"state": "error", "text": error.text})
    if found.state == "confirmed" and found.signed_in is not None:
        visit.sign_in(found.signed_in)
        return visit.json(
            {
                "state": "confirmed",
                "text": "扫码成功，正在登录…",
                "redirect": "/account",
                "done": True,
            }
        )
    return visit.json({"state": found.state, "text": QR_LOGIN_TEXTS.get(found.state, "")})


def qr_login_renew(visit: Visit) -> Response:
    stored = _qr_login(visit, renew=True)
    if stored is None:
        return visit.json({"state": "error", "text": MEANINGS[Reason.PROVIDER_UNAVAILABLE].text})
    return visit.json(
        {
            "state": "waiting",
            "text": QR_LOGIN_TEXTS["waiting"],
            "image": f"/qr/login.svg?v={stored['version']}",
        }
    )


# --- logging out ------------------------------------------------------------------------------


def logout(visit: Visit) -> Response:
    """Ends the platform session (its tokens stop working everywhere) and this browser's."""
    signed_in = visit.signed_in
    if signed_in is not None:

        def end(token: str) -> None:
            current = visit.signed_in or signed_in  # the tokens may have been refreshed
            visit.platform.logout(visit.caller, token, current.tokens.refresh_token)

        # Already over on the platform's side: the browser session ends anyway.
        with contextlib.suppress(PlatformError, SessionEnded):
            visit.with_token(end)
    visit.sign_out()
    return visit.redirect("/?signed_out=1")
