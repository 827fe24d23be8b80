"""What every page handler shares: the browser's session, CSRF, the caller, rendering.

A handler is a plain function `handler(visit) -> Response`, run in a worker thread (the
platform client and the session store block); `page(...)` wraps it into a Starlette
endpoint that reads the form, loads the session, checks the CSRF token of every POST,
requires a sign-in where asked, and saves the session and its cookie afterwards.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from etax_platform.clock import Clock
from services.web import labels
from services.web.platform import Caller, Platform, PlatformError, SignedIn
from services.web.sessions import SessionStore, WebSession
from services.web.settings import WebSettings

log = logging.getLogger("etax.web")

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_ENDED_TEXT = "登录已失效，请重新登录"
CSRF_TEXT = "页面已过期或请求来源不明，请刷新页面后重试"


@dataclass
class Services:
    settings: WebSettings
    platform: Platform
    sessions: SessionStore
    templates: jinja2.Environment
    clock: Clock


class SessionEnded(Exception):
    """The platform session is over (expired, revoked, logged out elsewhere)."""


@dataclass
class Errors:
    """What went wrong with a form: a text per field and one for the form as a whole."""

    form: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.form or self.fields)

    def add(self, error: PlatformError, fields: dict[str, str] | None = None) -> Errors:
        """Ties the platform's text to the field it is about (by the error's field, then by
        its reason), or to the form."""
        table = fields or {}
        target = table.get(error.field) or table.get(error.reason) or ""
        if target:
            self.fields[target] = error.text
        else:
            self.form = error.text
        return self


def client_address(request: Request, proxies: frozenset[str]) -> str:
    """The browser's address: the last X-Forwarded-For entry when the peer is a trusted
    proxy (the gateway appends the address it saw), else the peer itself."""
    peer = request.client.host if request.client else ""
    forwarded = request.headers.get("x-forwarded-for", "")
    if peer in proxies and forwarded:
        candidate = forwarded.split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            return peer
    return peer


class Visit:
    """One request of one browser."""

    def __init__(
        self, services: Services, request: Request, session: WebSession, form: dict[str, str]
    ) -> None:
        self.services = services
        self.request = request
        self.session = session
        self.form = form
        settings = services.settings
        trusted = (request.client.host if request.client else "") in settings.proxies()
        self.caller = Caller(address=client_address(request, settings.proxies()))
        # The bureau in front (the gateway's x-etax-province), for the page's title only.
        self.province = request.headers.get("x-etax-province", "") if trusted else ""

    @property
    def platform(self) -> Platform:
        return self.services.platform

    @property
    def now(self) -> datetime:
        return self.services.clock.now()

    def value(self, name: str) -> str:
        return self.form.get(name, "").strip()

    # --- signing in and out -----------------------------------------------------------------

    @property
    def signed_in(self) -> SignedIn | None:
        data = self.session.get("login")
        return SignedIn.from_json(data) if data else None

    def sign_in(self, signed_in: SignedIn) -> None:
        """A new platform session: new browser session id, the tokens kept here only."""
        self.session = self.services.sessions.rotate(self.session)
        self.session["login"] = signed_in.to_json()
        for key in list(self.session.keys()):
            if key.startswith(("flow:", "face:")) or key in ("qr_login", "identities"):
                self.session.pop(key)

    def replace_login(self, signed_in: SignedIn) -> None:
        """New tokens for the same platform session (refresh, identity switch)."""
        self.session["login"] = signed_in.to_json()
        self.session.pop("identities")

    def sign_out(self) -> None:
        self.services.sessions.end(self.session)

    def token(self) -> str:
        """A valid access token, refreshed on the server shortly before it expires."""
        current = self.signed_in
        if current is None:
            raise SessionEnded
        margin = timedelta(seconds=self.services.settings.refresh_margin_seconds)
        if current.tokens.access_expires_at - margin > self.now:
            return current.tokens.access_token
        return self._refresh(current).tokens.access_token

    def _refresh(self, current: SignedIn) -> SignedIn:
        sessions = self.services.sessions
        # One refresh per session at a time: a refresh token works once, and a second use
        # would count as reuse. Whoever waits takes the tokens the other one stored.
        deadline = time.monotonic() + 5
        while not sessions.try_lock(self.session, "refresh", timedelta(seconds=10)):
            if time.monotonic() > deadline:
                raise SessionEnded
            time.sleep(0.05)
        try:
            stored = sessions.reload(self.session).get("login")
            if stored and stored["refresh_token"] != current.tokens.refresh_token:
                fresh = SignedIn.from_json(stored)
                self.session["login"] = stored
                return fresh
            try:
                refreshed = self.platform.refresh(self.caller, current.tokens.refresh_token)
            except PlatformError as error:
                if error.session_ended:
                    raise SessionEnded from None
                raise
            self.session["login"] = refreshed.to_json()
            sessions.save(self.session)
            return refreshed
        finally:
            sessions.unlock(self.session, "refresh")

    def with_token(self, call: Callable[[str], Any]) -> Any:
        """Calls the platform with the access token; on "your token" errors refreshes once
        and tries again, then gives up on the session."""
        try:
            return call(self.token())
        except PlatformError as error:
            if not error.session_ended:
                raise
        current = self.signed_in
        if current is None:
            raise SessionEnded
        try:
            return call(self._refresh(current).tokens.access_token)
        except PlatformError as error:
            if error.session_ended:
                raise SessionEnded from None
            raise

    # --- answers --------------------------------------------------------------------------

    def flash(self, text: str, kind: str = "info") -> None:
        self.session["flash"] = [*self.session.get("flash", []), {"kind": kind, "text": text}]

    def render(self, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
        flashes = self.session.pop("flash") if "flash" in self.session else []
        signed_in = self.signed_in
        page = self.services.templates.get_template(template).render(
            visit=self,
            csrf_token=self.session.csrf_token,
            signed_in=signed_in,
            labels=labels,
            flashes=flashes or [],
            simulator=self.services.settings.app_simulator_enabled,
            poll_ms=self.services.settings.poll_interval_ms,
            province_name=labels.province(signed_in.province if signed_in else self.province),
            path=self.request.url.path,
            errors=context.pop("errors", None) or Errors(),
            **context,
        )
        return HTMLResponse(page, status_code=status, headers={"cache-control": "no-store"})

    def redirect(self, url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303)

    def json(self, data: dict[str, Any], status: int = 200) -> JSONResponse:
        return JSONResponse(data, status_code=status, headers={"cache-control": "no-store"})


Handler = Callable[[Visit], Response]


def page(
    services: Services, handler: Handler, *, signed_in: bool = False, api: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint around a handler (see the module docstring)."""

    async def endpoint(request: Request) -> Response:
        form: dict[str, str] = {}
        if request.method == "POST":
            submitted = await request.form()
            form = {k: v for k, v in submitted.items() if isinstance(v, str)}
        return await run_in_threadpool(
            _handle, services, handler, request, form, needs_sign_in=signed_in, api=api
        )

    return endpoint


def _handle(
    services: Services,
    handler: Handler,
    request: Request,
    form: dict[str, str],
    *,
    needs_sign_in: bool,
    api: bool,
) -> Response:
    cookie = request.cookies.get(services.settings.cookie_name)
    session = services.sessions.load(cookie) or services.sessions.new()
    visit = Visit(services, request, session, form)
    if request.method == "POST" and not _csrf_ok(request, session, form):
        log.info("refused a %s without a valid CSRF token", request.url.path)
        response: Response = (
            visit.json({"error": CSRF_TEXT}, 403)
            if api
            else visit.render("error.html", status=403, message=CSRF_TEXT)
        )
        return _finish(services, visit, response, cookie)
    if needs_sign_in and visit.signed_in is None:
        response = _signed_out(visit, api, "请先登录")
        return _finish(services, visit, response, cookie)
    try:
        response = handler(visit)
    except SessionEnded:
        visit.session.pop("login")
        response = _signed_out(visit, api, SESSION_ENDED_TEXT)
    return _finish(services, visit, response, cookie)


def _signed_out(visit: Visit, api: bool, text: str) -> Response:
    if api:
        return visit.json({"state": "signed_out", "text": text, "redirect": "/"}, 401)
    visit.flash(text, "error")
    return visit.redirect("/")


def _csrf_ok(request: Request, session: WebSession, form: dict[str, str]) -> bool:
    """Synchronizer token: the one stored with this session, in the form or a header."""
    if session.new:
        return False
    sent = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER, "")
    return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf_token.encode())


def _finish(services: Services, visit: Visit, response: Response, cookie: str | None) -> Response:
    settings = services.settings
    session = visit.session
    if session.ended:
        response.delete_cookie(settings.cookie_name, path="/", httponly=True, samesite="lax")
        return response
    now = int(time.time())
    if now - int(session.get("seen", 0)) > 60:
        session["seen"] = now  # keeps an idle-but-used session alive
    services.sessions.save(session)
    if session.session_id != cookie:
        response.set_cookie(
            settings.cookie_name,
            session.session_id,
            # A browser-session cookie: the server's record decides how long it is good for.
            path="/",
            secure=settings.secure_cookies,
            httponly=True,
            samesite="lax",
        )
    return response
