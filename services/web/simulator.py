"""The tax APP simulator (development only, like the SMS outbox; never in production).

It stands in for the 税务 APP on a second tab of the same browser: it scans a QR code this
browser was shown (or a pasted payload) through FaceService.ScanTicket, submits a face
capture with a chosen outcome (the face simulator judges captures by their first bytes),
logs in as the APP and confirms a QR login with the APP's own session
(AuthService.ConfirmQrLogin), and shows the codes "delivered" to a phone or mailbox, which
it reads from the SMS service's development outbox directly (SmsOutboxService is internal:
the gateway never routes it).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from etax_platform.pii import mask_email, mask_phone
from services.web import labels
from services.web.platform import LoginTarget, PersonIdentity, PlatformError, Scanned, SignedIn
from services.web.web import Errors, Visit

# The APP's own login (its state lives in this browser's session, beside the page's).
_APP = "app"
_SCAN = "app_scan"


def _app(visit: Visit) -> SignedIn | None:
    data = visit.session.get(_APP)
    return SignedIn.from_json(data) if data else None


def home(
    visit: Visit,
    *,
    errors: Errors | None = None,
    result: dict[str, Any] | None = None,
    inbox: dict[str, Any] | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    return visit.render(
        "simulator.html",
        status=status,
        app=_app(visit),
        recent=visit.session.get("recent_qr", []),
        scanned=visit.session.get(_SCAN),
        outcomes=labels.CAPTURE_OUTCOMES,
        errors=errors,
        result=result,
        inbox=inbox,
        values=values or {},
    )


def page(visit: Visit) -> Response:
    return home(visit)


def scan(visit: Visit) -> Response:
    """扫一扫: a QR login (needs the APP logged in) or a face ticket (no APP login, Q14)."""
    payload = visit.value("payload")
    pick = visit.value("recent")
    if not payload and pick.isdigit():
        recent = visit.session.get("recent_qr", [])
        if int(pick) < len(recent):
            payload = recent[int(pick)]["payload"]
    if not payload:
        return home(
            visit,
            errors=Errors(fields={"payload": "请粘贴二维码内容或选择本浏览器显示过的二维码"}),
            status=400,
        )
    if visit.platform.is_qr_login(payload):
        visit.session[_SCAN] = {"kind": "qr_login", "payload": payload}
        return visit.redirect("/dev/app/#scanned")
    try:
        scanned = visit.platform.scan_ticket(visit.caller, payload)
    except PlatformError as error:
        return home(visit, errors=Errors(fields={"payload": error.text}), status=400)
    visit.session[_SCAN] = {
        "kind": "face",
        "ticket_id": scanned.ticket_id,
        "scan_token": scanned.scan_token,
        "purpose": scanned.purpose,
        "purpose_name": labels.PURPOSES.get(scanned.purpose, ""),
        "masked_name": scanned.masked_name,
        "identity_required": scanned.identity_required,
    }
    return visit.redirect("/dev/app/#scanned")


def capture(visit: Visit) -> Response:
    stored = visit.session.get(_SCAN)
    if not stored or stored.get("kind") != "face":
        return visit.redirect("/dev/app/")
    scanned = Scanned(
        ticket_id=stored["ticket_id"],
        scan_token=stored["scan_token"],
        purpose=stored["purpose"],
        masked_name=stored["masked_name"],
        identity_required=stored["identity_required"],
    )
    identity = None
    values = {name: visit.value(name) for name in ("document_type", "document_number", "name")}
    if scanned.identity_required:
        identity = PersonIdentity(
            values["document_type"] or "DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD",
            values["document_number"],
            values["name"],
        )
    try:
        ticket = visit.platform.submit_capture(
            visit.caller, scanned, visit.value("outcome"), identity
        )
    except PlatformError as error:
        return home(visit, errors=Errors(form=error.text), values=values, status=400)
    if ticket.state in ("passed", "failed"):
        visit.session.pop(_SCAN)
    text = {
        "passed": "人脸识别通过，请回到网页继续",
        "failed": ticket.failure_text,
    }.get(ticket.state, ticket.failure_text)
    result = {"state": ticket.state, "text": text, "attempts_left": ticket.attempts_left}
    return home(visit, result=result, values=values)


def confirm(visit: Visit) -> Response:
    stored = visit.session.get(_SCAN)
    app = _app(visit)
    if not stored or stored.get("kind") != "qr_login":
        return visit.redirect("/dev/app/")
    if app is None:
        return home(visit, errors=Errors(form="请先在 APP 中登录"), status=400)
    try:
        visit.platform.confirm_qr_login(visit.caller, app.tokens.access_token, stored["payload"])
    except PlatformError as error:
        if error.session_ended:
            visit.session.pop(_APP)
        return home(visit, errors=Errors(form=error.text), status=400)
    visit.session.pop(_SCAN)
    business = labels.identity_title(app.identity)
    return home(visit, result={"state": "confirmed", "text": f"已确认登录，网页将登录{business}"})


def app_login(visit: Visit) -> Response:
    """The APP logs in (password, then its own face check, which the simulator passes)."""
    entry = visit.value("entry") if visit.value("entry") in labels.ENTRIES else "natural"
    values = {n: visit.value(n) for n in ("entry", "app_account", "app_enterprise_code")}
    target = LoginTarget(
        entry=labels.ENTRIES[entry][0],
        enterprise_code=values["app_enterprise_code"] if entry == "enterprise" else "",
        agency_code=values["app_enterprise_code"] if entry == "agent" else "",
    )
    platform, caller = visit.platform, visit.caller
    try:
        started = platform.start_login(
            caller, target, values["app_account"], visit.form.get("app_password", "")
        )
        face = platform.start_login_face(caller, started.challenge_id)
        scanned = platform.scan_ticket(caller, face.qr_payload)
        platform.submit_capture(caller, scanned, "pass")
        proof = platform.get_ticket(caller, face.ticket_id).proof
        signed_in = platform.complete_login_with_face(caller, started.challenge_id, proof)
    except PlatformError as error:
        return home(
            visit, errors=Errors(fields={"app_login": error.text}), values=values, status=400
        )
    visit.session[_APP] = signed_in.to_json()
    return visit.redirect("/dev/app/")


def app_logout(visit: Visit) -> Response:
    app = _app(visit)
    if app is not None:
        try:
            platform = visit.platform
            platform.logout(visit.caller, app.tokens.access_token, app.tokens.refresh_token)
        except PlatformError:
            pass
    visit.session.pop(_APP)
    return visit.redirect("/dev/app/")


def inbox(visit: Visit) -> Response:
    recipient = visit.value("recipient")
    if not recipient:
        return home(visit, errors=Errors(fields={"recipient": "请输入手机号码或邮箱"}), status=400)
    try:
        messages = visit.platform.outbox(recipient)
    except PlatformError as error:
        return home(visit, errors=Errors(fields={"recipient": error.text}), status=400)
    masked = mask_email(recipient) if "@" in recipient else mask_phone(recipient)
    listed = [
        {
            "purpose": labels.PURPOSES.get(m.purpose, ""),
            "code": m.code,
            "text": m.text,
            "sent_at": m.sent_at.strftime("%H:%M:%S") if m.sent_at else "",
        }
        for m in messages[:10]
    ]
    return home(
        visit, inbox={"recipient": masked, "messages": listed}, values={"recipient": recipient}
    )
