"""QR codes the page shows and follows: face tickets (扫码验证, registration, forgot
password, self-unlock, real-name upgrade, D5 face login) and the QR login (扫码登录, D3).

The session keeps each ticket under a slot name ("face:<slot>"); the page shows it as an
SVG image (/qr/face/<slot>.svg) and polls /bff/face/<slot>, which reads the ticket through
the platform. When the ticket passes, the slot's completion runs on the server with the
proof (the proof never reaches the browser) and tells the page where to go next.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import segno
from starlette.responses import Response

from etax_platform.errors import MEANINGS, Reason
from services.web.platform import FaceQr, PlatformError
from services.web.web import Visit

# slot -> completion(visit, stored slot, proof) -> what the poll answers (redirect, text)
Completion = Callable[[Visit, dict[str, Any], str], dict[str, Any]]
COMPLETIONS: dict[str, Completion] = {}

WAITING_TEXT = "请使用税务 APP 首页右上角“扫一扫”扫描二维码"
SCANNED_TEXT = "已扫码，请在税务 APP 上按提示完成人脸识别"
_STATE_TEXTS = {
    "created": WAITING_TEXT,
    "scanned": SCANNED_TEXT,
    "failed": MEANINGS[Reason.FACE_GO_TO_HALL].text,
}


def completion(slot: str) -> Callable[[Completion], Completion]:
    def register(complete: Completion) -> Completion:
        COMPLETIONS[slot] = complete
        return complete

    return register


def _millis(instant: datetime | None) -> int:
    return int(instant.timestamp() * 1000) if instant else 0


def remember_qr(visit: Visit, kind: str, payload: str) -> None:
    """The development APP simulator offers to scan the QR codes this browser was shown."""
    if not visit.services.settings.app_simulator_enabled:
        return
    recent = [q for q in visit.session.get("recent_qr", []) if q["payload"] != payload]
    recent.insert(0, {"kind": kind, "payload": payload, "shown": int(time.time())})
    visit.session["recent_qr"] = recent[:6]


def start(visit: Visit, slot: str, face: FaceQr, **context: Any) -> None:
    visit.session[f"face:{slot}"] = {
        "ticket_id": face.ticket_id,
        "payload": face.qr_payload,
        "expires_ms": _millis(face.expires_at),
        **context,
    }
    remember_qr(visit, slot, face.qr_payload)


def current(visit: Visit, slot: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = visit.session.get(f"face:{slot}")
    return found


def svg(payload: str, title: str) -> Response:
    buffer = io.BytesIO()
    segno.make(payload, error="m").save(
        buffer, kind="svg", scale=5, border=2, xmldecl=False, title=title, dark="#1f2d3d"
    )
    return Response(
        buffer.getvalue(), media_type="image/svg+xml", headers={"cache-control": "no-store"}
    )


def image(visit: Visit) -> Response:
    slot = str(visit.request.path_params["slot"])
    stored = current(visit, slot)
    if stored is None:
        return Response(status_code=404)
    return svg(stored["payload"], "人脸识别二维码")


def poll(visit: Visit) -> Response:
    """The ticket's state for the page; runs the slot's completion once it passed."""
    slot = str(visit.request.path_params["slot"])
    stored = current(visit, slot)
    complete = COMPLETIONS.get(slot)
    if stored is None or complete is None:
        return visit.json(
            {"state": "gone", "text": MEANINGS[Reason.TICKET_INVALID].text, "done": True}
        )
    try:
        ticket = visit.platform.get_ticket(visit.caller, stored["ticket_id"])
    except PlatformError as error:
        return visit.json({"state": "error", "text": error.text, "done": True})
    if ticket.state == "passed":
        try:
            passed = complete(visit, stored, ticket.proof)
        except PlatformError as error:
            visit.session.pop(f"face:{slot}")
            return visit.json({"state": "error", "text": error.text, "done": True})
        visit.session.pop(f"face:{slot}")
        return visit.json({"state": "passed", "done": True, **passed})
    # Still open: the APP has yet to scan, or to capture again after a poor image (B7).
    open_ = ticket.state in ("created", "scanned")
    text = (ticket.state != "created" and ticket.failure_text) or _STATE_TEXTS.get(
        ticket.state, MEANINGS[Reason.TICKET_INVALID].text
    )
    answer: dict[str, Any] = {"state": ticket.state, "text": text, "done": not open_}
    if ticket.state == "scanned":
        answer["attempts_left"] = ticket.attempts_left
    return visit.json(answer)
