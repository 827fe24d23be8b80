"""`build(settings) -> Starlette`: the web pages, their BFF endpoints and static files.

Paths never start with /v1/ (the platform's JSON API on the same origin) and never look
like a gRPC method (/package.Service/Method): the gateway routes those elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import jinja2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from etax_platform.clock import Clock, SystemClock
from etax_platform.kv import KeyValueStore
from services.web import account, faces, login, recovery, registration, simulator
from services.web.metrics import RequestMetrics
from services.web.platform import Platform
from services.web.sessions import SessionStore
from services.web.settings import WebSettings
from services.web.web import Handler, Services, page

HERE = Path(__file__).resolve().parent

# No inline script or style anywhere, no framing, forms post only here.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; form-action 'self'; "
    "base-uri 'none'"
)


class SecurityHeaders:
    """Adds the same security headers to every response (pages, JSON, static files)."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        ]
        if hsts:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, with_headers)


def templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment


def build(
    settings: WebSettings,
    *,
    platform: Platform | None = None,
    store: KeyValueStore | None = None,
    clock: Clock | None = None,
) -> Starlette:
    owned_store = store is None
    kv = store if store is not None else settings.platform.open_store()
    client = platform or Platform(
        settings.gateway_target,
        timeout=settings.call_timeout_seconds,
        outbox_target=settings.sms_outbox_target if settings.app_simulator_enabled else "",
    )
    services = Services(
        settings=settings,
        platform=client,
        sessions=SessionStore(kv, timedelta(seconds=settings.session_idle_seconds)),
        templates=templates(),
        clock=clock or SystemClock(),
    )

    def get(path: str, handler: Handler, **options: bool) -> Route:
        return Route(path, page(services, handler, **options), methods=["GET"])

    def post(path: str, handler: Handler, **options: bool) -> Route:
        return Route(path, page(services, handler, **options), methods=["POST"])

    signed_in = {"signed_in": True}
    routes: list[BaseRoute] = [
        Route("/healthz", _healthz, methods=["GET"]),
        # --- login (D1-D5) ---
        get("/", login.login_page),
        post("/login", login.login_submit),
        get("/login/subject", login.subject_page),
        post("/login/subject", login.subject_choose),
        post("/login/subject/search", login.subject_query),
        get("/login/verify", login.verify_page),
        post("/login/verify/send-code", login.send_code),
        post("/login/verify/code", login.complete_with_code),
        post("/login/verify/face", login.start_face),
        post("/login/subject-face", login.subject_face_start),
        get("/login/subject-face", login.subject_face_page),
        post("/logout", login.logout),
        get("/qr/login.svg", login.qr_login_image),
        post("/bff/qr-login", login.qr_login_poll, api=True),
        post("/bff/qr-login/renew", login.qr_login_renew, api=True),
        post("/bff/subjects", login.subject_search, api=True),
        get("/qr/face/{slot:str}.svg", faces.image),
        post("/bff/face/{slot:str}", faces.poll, api=True),
        # --- registration (B1-B6) ---
        get("/register", registration.start_page),
        post("/register", registration.start_submit),
        get("/register/overseas", registration.start_page),
        post("/register/overseas", registration.start_submit),
        get("/register/details", registration.details_page),
        post("/register/face", registration.start_face),
        post("/register/send-code", registration.send_code),
        post("/register/complete", registration.complete),
        # --- forgot password, phone recovery, self-unlock (C5, C6, E1) ---
        get("/password-reset", recovery.reset_page),
        post("/password-reset", recovery.reset_start),
        get("/password-reset/verify", recovery.reset_verify_page),
        post("/password-reset/send-code", recovery.reset_send_code),
        post("/password-reset/face", recovery.reset_face),
        post("/password-reset/complete", recovery.reset_complete),
        get("/phone-recovery", recovery.recovery_page),
        post("/phone-recovery", recovery.recovery_start),
        get("/phone-recovery/phone", recovery.recovery_phone_page),
        post("/phone-recovery/send-code", recovery.recovery_send_code),
        post("/phone-recovery/complete", recovery.recovery_complete),
        get("/unlock", recovery.unlock_page),
        post("/unlock", recovery.unlock_start),
        # --- account center (B3, C2-C4, D5, F1-F5) ---
        get("/account", account.account_page, **signed_in),
        post("/account/phones/send-code", account.phone_send_code, **signed_in),
        post("/account/phones/add", account.phone_add, **signed_in),
        post("/account/phones/remove", account.phone_remove, **signed_in),
        post("/account/phones/default", account.phone_default, **signed_in),
        post("/account/username", account.username_set, **signed_in),
        post("/account/password", account.password_change, **signed_in),
        post("/account/real-name", account.real_name_start, **signed_in),
        get("/account/relations", account.relations, **signed_in),
        post("/account/relations/apply", account.apply, **signed_in),
        post("/account/relations/add", account.add_person, **signed_in),
        post("/account/relations/decide", account.decide, **signed_in),
        get("/account/identities", account.identities_page, **signed_in),
        get("/account/tax-authorities", account.authorities_page, **signed_in),
        post("/account/switch", account.switch, **signed_in),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    if settings.app_simulator_enabled:
        routes += [
            get("/dev/app/", simulator.page),
            post("/dev/app/scan", simulator.scan),
            post("/dev/app/capture", simulator.capture),
            post("/dev/app/confirm", simulator.confirm),
            post("/dev/app/login", simulator.app_login),
            post("/dev/app/logout", simulator.app_logout),
            post("/dev/app/inbox", simulator.inbox),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if platform is None:
                client.close()
            if owned_store:
                kv.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(SecurityHeaders, hsts=settings.secure_cookies)
    app.add_middleware(RequestMetrics)
    return app


def server_config(settings: WebSettings, app: Starlette) -> uvicorn.Config:
    """How uvicorn serves the pages (python -m services.web and the tests alike)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # the platform's masking log format
        # Paths carry no personal data, but the gateway's access log already has them.
        access_log=False,
        # The pages read the browser's address from X-Forwarded-For themselves, only from
        # the trusted proxies (web.client_address); uvicorn must not rewrite the peer.
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.grace_seconds),
    )


async def _healthz(_request: Request) -> Response:
    return PlainTextResponse("ok")
