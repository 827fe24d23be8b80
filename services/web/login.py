"""The login page (网页版登录界面): QR login on the left (D3), the entries on the right
(企业业务 / 自然人业务 / 代理业务, and 特定主体 under 企业业务, D1, D5), the specific
subject's number searched and chosen after the password (D5, Q23), then step 2 by SMS
code, email code (B6) or scan verification (D2, D4), and logging out."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from starlette.responses import Response

from etax_platform.errors import MEANINGS, Reason
from services.web import codes, faces, labels
from services.web.platform import LoginTarget, PlatformError, Project, SecondSteps, SignedIn
from services.web.web import Errors, SessionEnded, Visit

SMS = "SECOND_STEP_SMS_CODE"
EMAIL = "SECOND_STEP_EMAIL_CODE"
SCAN = "SECOND_STEP_SCAN_VERIFICATION"
# Step 2 is chosen from what the platform offers (second_steps), in this order; a step
# the page does not know yet is left out. Kind "code": a code to the masked phone or
# email (the same two calls either way, B6).
STEPS: dict[str, dict[str, str]] = {
    SMS: {"key": "sms", "label": labels.CODE_CHANNELS["sms"]["tab"], "kind": "code"},
    EMAIL: {"key": "email", "label": labels.CODE_CHANNELS["email"]["tab"], "kind": "code"},
    SCAN: {"key": "scan", "label": "扫码验证", "kind": "scan"},
}
# D5: how many of the person's subjects the list shows at once.
SUBJECTS_SHOWN = 20
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
    if stored and not renew and stored["expires_ms"] > codes.ms_from_now(5):
        return stored
    try:
        qr_login_id, payload, expires_at = visit.platform.create_qr_login(visit.caller)
    except PlatformError:
        return None
    stored = {
        "id": qr_login_id,
        "payload": payload,
        "expires_ms": int(expires_at.timestamp() * 1000) if expires_at else codes.ms_from_now(120),
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
        errors.fields["account"] = labels.REQUIRED["account"]
    if not visit.form.get("password"):
        errors.fields["password"] = labels.REQUIRED["password"]
    # D5: the specific subject's number may be left out (or typed in part): it is searched
    # among the person's own subjects once the password is verified.
    required = {"enterprise": "enterprise_code", "agent": "agency_code"}
    if entry in required and not values[required[entry]]:
        errors.fields[required[entry]] = "此项为必填项"
    if errors:
        return _render_login(visit, entry, values, errors, 400)
    target = LoginTarget(
        entry=labels.ENTRIES[entry][0],
        enterprise_code=values["enterprise_code"] if entry == "enterprise" else "",
        agency_code=values["agency_code"] if entry == "agent" else "",
        subject_type=values["subject_type"] if entry == "subject" else "",
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
    if not started.subject_required:
        _start_step_two(visit, entry, started.challenge_id, started.steps)
        return visit.redirect("/login/verify")
    typed = values["subject_number"]
    visit.session["flow:login"] = {
        "challenge_id": started.challenge_id,
        "entry": entry,
        "subject_required": True,
        "subject_type": values["subject_type"],
        "query": typed,
    }
    visit.session.pop("face:login")
    if typed:
        # A whole number typed on the form is chosen at once (the same relation check as
        # StartLogin with it); anything else is the search's first query.
        try:
            steps = visit.platform.select_login_subject(visit.caller, started.challenge_id, typed)
        except PlatformError as error:
            if error.reason not in (
                Reason.RELATION_NOT_FOUND.value,
                Reason.INVALID_ARGUMENT.value,
            ):
                visit.flash(error.text, "error")
        else:
            _start_step_two(visit, entry, started.challenge_id, steps)
            return visit.redirect("/login/verify")
    return visit.redirect("/login/subject")


def _start_step_two(visit: Visit, entry: str, challenge_id: str, steps: SecondSteps) -> None:
    visit.session["flow:login"] = {
        "challenge_id": challenge_id,
        "entry": entry,
        "second_steps": list(steps.second_steps),
        "masked_phone": steps.masked_phone,
        "phone_empty": steps.phone_empty,
        "masked_email": steps.masked_email,
    }
    visit.session.pop("face:login")


# --- D5: the specific subject, searched and chosen after the password ---------------------


def _subject_flow(visit: Visit) -> dict[str, Any] | None:
    flow: dict[str, Any] | None = visit.session.get("flow:login")
    return flow if flow is not None and flow.get("subject_required") else None


def _subject_list(found: list[Project]) -> dict[str, Any]:
    """The listbox's options and what the live region says about them. None found: the
    field's 必填 prompt, which means the person has no relation (Q23)."""
    shown = found[:SUBJECTS_SHOWN]
    if not found:
        status = "未查询到可选择的编号"
    elif len(found) > len(shown):
        status = f"共找到{len(found)}个，仅显示前{len(shown)}个，请输入更多编号缩小范围"
    else:
        status = f"共找到{len(found)}个"
    return {
        "subjects": [
            {
                "number": p.project_number,
                "label": " · ".join(part for part in (p.project_number, p.enterprise_name) if part),
            }
            for p in shown
        ],
        "status": status,
        "required": "" if found else labels.REQUIRED["subject_number"],
    }


def _search(visit: Visit, flow: dict[str, Any], query: str) -> dict[str, Any]:
    """Raises PlatformError but for a query the platform refuses (an error on that field)."""
    try:
        found = visit.platform.search_login_subjects(visit.caller, flow["challenge_id"], query)
    except PlatformError as error:
        if error.field != "query":
            raise
        return {**_subject_list([]), "required": "", "query_error": error.text}
    return _subject_list(found)


def subject_page(visit: Visit, errors: Errors | None = None, status: int = 200) -> Response:
    flow = _subject_flow(visit)
    if flow is None:
        return visit.redirect("/?entry=subject")
    try:
        listed = _search(visit, flow, flow.get("query", ""))
    except PlatformError as error:
        # The login challenge is over (expired, used): start again.
        visit.session.pop("flow:login")
        visit.flash(error.text, "error")
        return visit.redirect("/?entry=subject")
    errors = errors or Errors()
    if listed.get("query_error"):
        errors.fields.setdefault("query", listed["query_error"])
    if listed["required"]:
        errors.fields.setdefault("subject_number", listed["required"])
    return visit.render(
        "subject.html",
        status=status,
        flow=flow,
        subject_type_name=labels.subject_type_name(flow.get("subject_type", "")),
        listed=listed,
        errors=errors,
    )


def subject_query(visit: Visit) -> Response:
    """The search without script (the page's 查询 button): the list for this query."""
    flow = _subject_flow(visit)
    if flow is None:
        return visit.redirect("/?entry=subject")
    flow["query"] = visit.value("query")
    visit.session["flow:login"] = flow
    return subject_page(visit)


def subject_search(visit: Visit) -> Response:
    """D5, Q23: the live search (site.js): only ever the subjects of the person whose
    password this browser's login challenge verified."""
    flow = _subject_flow(visit)
    if flow is None:
        return visit.json({"text": "请重新登录", "redirect": "/?entry=subject"}, 409)
    query = visit.value("query")
    try:
        listed = _search(visit, flow, query)
    except PlatformError as error:
        return visit.json({"text": error.text, "redirect": "/?entry=subject"}, 409)
    flow["query"] = query
    visit.session["flow:login"] = flow
    return visit.json(listed)


def subject_choose(visit: Visit) -> Response:
    flow = _subject_flow(visit)
    if flow is None:
        return visit.redirect("/?entry=subject")
    number = visit.value("subject_number")
    if not number:
        return subject_page(
            visit, Errors(fields={"subject_number": labels.REQUIRED["subject_number"]}), 400
        )
    try:
        steps = visit.platform.select_login_subject(visit.caller, flow["challenge_id"], number)
    except PlatformError as error:
        fields = {
            "subject_number": "subject_number",
            Reason.RELATION_NOT_FOUND.value: "subject_number",
        }
        return subject_page(visit, Errors().add(error, fields), 400)
    _start_step_two(visit, flow["entry"], flow["challenge_id"], steps)
    return visit.redirect("/login/verify")


# --- step 2 ---------------------------------------------------------------------------------


def _steps(flow: dict[str, Any]) -> list[dict[str, str]]:
    return [STEPS[s] for s in STEPS if s in flow["second_steps"]]


def _code_step(flow: dict[str, Any]) -> str:
    """The code step, "sms" or "email" (B6): a login has at most one."""
    return next((s["key"] for s in _steps(flow) if s["kind"] == "code"), "")


def verify_page(visit: Visit, errors: Errors | None = None, status: int = 200) -> Response:
    flow: dict[str, Any] | None = visit.session.get("flow:login")
    if flow is None:
        return visit.redirect("/")
    if flow.get("subject_required"):
        return visit.redirect("/login/subject")
    steps = _steps(flow)
    keys = [s["key"] for s in steps]
    asked = visit.request.query_params.get("step", "")
    face = faces.current(visit, "login")
    if face is not None and face.get("challenge_id") != flow["challenge_id"]:
        face = None
    chosen = asked if asked in keys else ("scan" if face else (keys[0] if keys else ""))
    code_step = _code_step(flow)
    masked_contact = flow.get("masked_email", "") if code_step == "email" else flow["masked_phone"]
    # D4: no phone and nothing else to send a code to.
    phone_empty = flow["phone_empty"] and not code_step
    return visit.render(
        "verify.html",
        status=status,
        flow=flow,
        steps=steps,
        chosen=chosen,
        channel=labels.CODE_CHANNELS.get(code_step, {}),
        masked_contact=masked_contact,
        face=face,
        entry_title=labels.ENTRIES[flow["entry"]][1],
        phone_empty_text=MEANINGS[Reason.PHONE_EMPTY].text if phone_empty else "",
        **codes.timers(flow),
        errors=errors,
    )


def send_code(visit: Visit) -> Response:
    flow: dict[str, Any] | None = visit.session.get("flow:login")
    if flow is None or flow.get("subject_required"):
        return visit.redirect("/")
    errors = Errors()
    try:
        sent = visit.platform.send_login_code(visit.caller, flow["challenge_id"])
    except PlatformError as error:
        codes.refused(flow, error)  # E2: the button waits as long as the platform says
        errors.add(error, {Reason.SMS_RATE_LIMITED.value: "code"})
    else:
        flow["code_sent_to"] = sent.masked_recipient
        codes.sent(flow, sent.expires_at, unknown_ttl_ms=300_000)
    visit.session["flow:login"] = flow
    if errors:
        return verify_page(visit, errors, 400)
    return visit.redirect(f"/login/verify?step={_code_step(flow) or 'sms'}")


def complete_with_code(visit: Visit) -> Response:
    flow: dict[str, Any] | None = visit.session.get("flow:login")
    if flow is None or flow.get("subject_required"):
        return visit.redirect("/")
    code = visit.value("code")
    if not code:
        channel = labels.CODE_CHANNELS.get(_code_step(flow), labels.CODE_CHANNELS["sms"])
        return verify_page(visit, Errors(fields={"code": f"请输入{channel['code']}"}), 400)
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
    if flow is None or flow.get("subject_required"):
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
