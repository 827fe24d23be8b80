"""Web service settings (ETAX_WEB_*)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from etax_platform import topology
from etax_platform.settings import ServiceSettings


class WebSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix=topology.service("web").env_prefix, extra="ignore", frozen=True
    )

    port: int = Field(default=topology.service("web").port, ge=0, le=65535)
    metrics_port: int = Field(default=topology.service("web").metrics_port, ge=0, le=65535)
    # The gateway's public listener: the pages call the platform there, as an APP backend.
    gateway_target: str = topology.default_target("web", "gateway_target")
    call_timeout_seconds: float = Field(default=10.0, gt=0)
    # Peers whose X-Forwarded-For is believed (the gateway in front of this service); the
    # browser's address is the entry the nearest of them appended.
    trusted_proxies: str = "127.0.0.1,::1"
    # The browser's session cookie: HttpOnly and SameSite always; Secure outside
    # development (None: decided by ETAX_ENVIRONMENT).
    cookie_name: str = "etax_session"
    cookie_secure: bool | None = None
    # A browser session (anonymous or signed in) ends after this long without a request;
    # a signed-in one also when its refresh token expires.
    session_idle_seconds: int = Field(default=1800, ge=60)
    # Access tokens are refreshed on the server this long before they expire.
    refresh_margin_seconds: int = Field(default=60, ge=0)
    # How often the pages poll a QR code's or face ticket's state.
    poll_interval_ms: int = Field(default=1500, ge=200)
    # The tax APP simulator under /dev/app/ (development only, like the SMS outbox) and
    # the outbox it reads the "phone's" messages from.
    app_simulator_enabled: bool = False
    sms_outbox_target: str = topology.default_target("web", "sms_outbox_target")

    @property
    def secure_cookies(self) -> bool:
        if self.cookie_secure is not None:
            return self.cookie_secure
        return self.platform.environment != "development"

    def proxies(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.trusted_proxies.split(",") if p.strip())

    @model_validator(mode="after")
    def _production_is_strict(self) -> WebSettings:
        if self.platform.environment == "production":
            if self.app_simulator_enabled:
                raise ValueError("production must not serve the APP simulator")
            if not self.secure_cookies:
                raise ValueError("production needs Secure cookies")
        return self
