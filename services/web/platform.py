"""Every call the web pages make to the platform, in one place.

The web service is a backend-for-frontend: it calls the platform the way an APP backend
does, through the gateway's public listener, as gRPC with the generated stubs. gRPC rather
than the JSON API because the stubs are typed from the same contract the services
implement, the platform's own `from_rpc_error` reads the error details (ErrorInfo,
LocalizedMessage, RetryInfo) exactly as the services write them, and gRPC status codes do
not move when the gateway's HTTP mapping does. Nothing outside this module sees a
protobuf message: it returns the plain values below and raises `PlatformError`.

The platform's API as issue 12 left it:
- The specific-subject login (D5, Q23) may start without the subject number
  (`LoginStart.subject_required`); `search_login_subjects` is the fuzzy search on that
  login challenge and `select_login_subject` the choice, which answers step 2's choices.
- Step 2 and forgot password may be an email code (B6, SECOND_STEP_EMAIL_CODE) for an
  overseas person without a phone (`SecondSteps.masked_email`, `ResetStart.masked_email`),
  sent and counted as an SMS code is.
- ListMyIdentities lists the natural person first, and SwitchIdentity takes back an item
  of that list as it was listed (`_identity_pb`).
- StartRegistration's province is the gateway's (it overwrites x-etax-province): nothing
  here sends a province or that header.
- Flood guards are per client: every call carries the browser's address in
  X-Forwarded-For (`Caller.address`), which the gateway believes from its trusted
  proxies (docs/web.md).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import grpc
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.binding.v1 import binding_pb2, binding_pb2_grpc
from etax.common.v1 import types_pb2
from etax.face.v1 import face_pb2, face_pb2_grpc
from etax.sms.v1 import sms_pb2, sms_pb2_grpc
from google.protobuf.message import Message

from etax_platform import tracing
from etax_platform.clients import open_channel
from etax_platform.clock import from_timestamp, optional_instant
from etax_platform.errors import MEANINGS, Reason, from_rpc_error

log = logging.getLogger("etax.web.platform")

# What the simulator's capture choices send (services/face/providers/simulator.py judges a
# capture by its first bytes).
CAPTURES = {
    "pass": b"pass-capture",
    "dark": b"dark-capture",
    "other-face": b"other-face-capture",
    "no-motion": b"no-motion-capture",
    "busy": b"busy-capture",
    "mismatch": b"mismatch-capture",
}
# A QR-login payload (auth) as opposed to a face ticket's (face): the APP tells them apart.
_QR_LOGIN_PREFIX = "etaxqr2."


@dataclass(frozen=True)
class Caller:
    """Who the web service calls for: the browser's address, for the gateway's per-client
    flood guards."""

    address: str


class PlatformError(Exception):
    """A refusal by the platform, with the user text it gave (the FAQ's, zh-CN)."""

    def __init__(
        self,
        reason: str,
        text: str,
        *,
        metadata: dict[str, str] | None = None,
        retry_after: timedelta | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.text = text
        self.metadata = metadata or {}
        self.retry_after = retry_after

    @property
    def field(self) -> str:
        return self.metadata.get("field", "")

    @property
    def session_ended(self) -> bool:
        """The request's own token is missing, expired or revoked: refresh or log in."""
        return self.reason == Reason.UNAUTHENTICATED.value

    def __str__(self) -> str:
        return f"{self.reason}: {self.text}"


def _error(error: grpc.RpcError) -> PlatformError:
    found = from_rpc_error(error)
    if found is not None:
        return PlatformError(
            found.reason.value,
            found.user_text,
            metadata=dict(found.metadata),
            retry_after=found.retry_after,
        )
    # The gateway's own answers (no token, flood guard, no upstream) are JSON Status only
    # for JSON clients; a gRPC client gets Envoy's bare grpc-status: the same reasons here.
    code = error.code() if hasattr(error, "code") else None
    reason = {
        grpc.StatusCode.UNAUTHENTICATED: Reason.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED: Reason.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND: Reason.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT: Reason.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED: Reason.TOO_MANY_REQUESTS,
    }.get(code, Reason.PROVIDER_UNAVAILABLE)
    if reason is Reason.PROVIDER_UNAVAILABLE:
        log.warning("platform call failed: %s", code)
    return PlatformError(reason.value, MEANINGS[reason].text)


# --- values the pages use ----------------------------------------------------------------


def _instant(message: Message, name: str) -> datetime | None:
    return optional_instant(message, name)


@dataclass(frozen=True)
class Identity:
    """Something the person may act as (F3, F4, F5, D5); `key` names it in a form."""

    entry: str
    enterprise_code: str = ""
    enterprise_name: str = ""
    role: str = ""
    subject_type: str = ""
    project_number: str = ""
    agency_code: str = ""
    client_code: str = ""
    client_name: str = ""
    tax_authority_code: str = ""
    tax_authority_name: str = ""
    province: str = ""

    @property
    def key(self) -> str:
        return "|".join(
            (
                self.entry,
                self.enterprise_code,
                self.project_number,
                self.agency_code,
                self.client_code,
            )
        )

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Identity:
        return Identity(**{k: str(v) for k, v in data.items() if k in Identity.__annotations__})


def _identity(message: binding_pb2.Identity) -> Identity:
    return Identity(
        entry=types_pb2.Entry.Name(message.entry),
        enterprise_code=message.enterprise_code,
        enterprise_name=message.enterprise_name,
        role=types_pb2.Role.Name(message.role) if message.role else "",
        subject_type=types_pb2.SubjectType.Name(message.subject_type)
        if message.subject_type
        else "",
        project_number=message.project_number,
        agency_code=message.agency_code,
        client_code=message.client_code,
        client_name=message.client_name,
        tax_authority_code=message.tax_authority.code,
        tax_authority_name=message.tax_authority.name,
        province=message.tax_authority.province,
    )


def _identity_pb(identity: Identity) -> binding_pb2.Identity:
    """An item of the identity list back as SwitchIdentity takes it: as it was listed."""
    message = binding_pb2.Identity(
        entry=_enum(types_pb2.Entry, identity.entry, "entry"),
        enterprise_code=identity.enterprise_code,
        enterprise_name=identity.enterprise_name,
        project_number=identity.project_number,
        agency_code=identity.agency_code,
        client_code=identity.client_code,
        client_name=identity.client_name,
    )
    if identity.tax_authority_code or identity.tax_authority_name or identity.province:
        message.tax_authority.CopyFrom(
            types_pb2.TaxAuthority(
                code=identity.tax_authority_code,
                name=identity.tax_authority_name,
                province=identity.province,
            )
        )
    if identity.role:
        message.role = _enum(types_pb2.Role, identity.role, "role")
    if identity.subject_type:
        message.subject_type = _enum(types_pb2.SubjectType, identity.subject_type, "subject_type")
    return message


@dataclass(frozen=True)
class Tokens:
    access_token: str
    access_expires_at: datetime
    refresh_token: str
    refresh_expires_at: datetime


@dataclass(frozen=True)
class SignedIn:
    """A platform session as the web service keeps it (never shown to the browser)."""

    session_id: str
    tokens: Tokens
    identity: Identity
    person_id: str
    masked_name: str
    real_name_level: int
    province: str

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "access_token": self.tokens.access_token,
            "access_expires_at": self.tokens.access_expires_at.isoformat(),
            "refresh_token": self.tokens.refresh_token,
            "refresh_expires_at": self.tokens.refresh_expires_at.isoformat(),
            "identity": self.identity.to_json(),
            "person_id": self.person_id,
            "masked_name": self.masked_name,
            "real_name_level": self.real_name_level,
            "province": self.province,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> SignedIn:
        return SignedIn(
            session_id=data["session_id"],
            tokens=Tokens(
                data["access_token"],
                datetime.fromisoformat(data["access_expires_at"]),
                data["refresh_token"],
                datetime.fromisoformat(data["refresh_expires_at"]),
            ),
            identity=Identity.from_json(data["identity"]),
            person_id=data["person_id"],
            masked_name=data["masked_name"],
            real_name_level=int(data["real_name_level"]),
            province=data["province"],
        )


def _signed_in(session: auth_pb2.Session) -> SignedIn:
    return SignedIn(
        session_id=session.session_id,
        tokens=Tokens(
            session.access_token,
            from_timestamp(session.access_token_expires_at),
            session.refresh_token,
            from_timestamp(session.refresh_token_expires_at),
        ),
        identity=_identity(session.identity),
        person_id=session.person_id,
        masked_name=session.masked_name,
        real_name_level=session.real_name_level,
        province=session.province,
    )


@dataclass(frozen=True)
class SecondSteps:
    """What step 2 (or a password reset) may use, and where a code would go."""

    # As the platform names them (SECOND_STEP_SMS_CODE, SECOND_STEP_EMAIL_CODE, ...).
    second_steps: tuple[str, ...]
    masked_phone: str
    phone_empty: bool
    # B6: an overseas person without a phone gets codes by email.
    masked_email: str = ""


def _second_steps(
    message: auth_pb2.StartLoginResponse | auth_pb2.SelectLoginSubjectResponse,
) -> SecondSteps:
    return SecondSteps(
        second_steps=tuple(auth_pb2.SecondStep.Name(s) for s in message.second_steps),
        masked_phone=message.masked_phone,
        phone_empty=message.phone_empty,
        masked_email=message.masked_email,
    )


@dataclass(frozen=True)
class LoginStart:
    challenge_id: str
    # Empty while subject_required.
    steps: SecondSteps
    expires_at: datetime | None
    # D5: the password is verified; the subject is searched for and chosen next.
    subject_required: bool = False


@dataclass(frozen=True)
class ResetStart:
    reset_id: str
    masked_phone: str
    phone_empty: bool
    masked_email: str


@dataclass(frozen=True)
class FaceQr:
    """A face ticket the page shows as a QR code and follows."""

    ticket_id: str
    qr_payload: str
    expires_at: datetime | None


def _face(message: auth_pb2.FaceChallenge) -> FaceQr:
    return FaceQr(message.ticket_id, message.qr_payload, _instant(message, "expires_at"))


@dataclass(frozen=True)
class TicketState:
    # created, scanned, passed, failed, expired, consumed
    state: str
    proof: str
    failure_text: str
    attempts_left: int


@dataclass(frozen=True)
class CodeSent:
    masked_recipient: str
    expires_at: datetime | None
    verification_id: str = ""


@dataclass(frozen=True)
class QrLoginState:
    # waiting, confirmed, expired, collected
    state: str
    signed_in: SignedIn | None


@dataclass(frozen=True)
class Registration:
    registration_id: str
    face_required: bool
    email_required: bool


@dataclass(frozen=True)
class Phone:
    phone_id: str
    masked_number: str
    is_default: bool


@dataclass(frozen=True)
class Profile:
    masked_name: str
    document_type: str
    masked_document_number: str
    phones: tuple[Phone, ...]
    masked_email: str
    username: str
    username_changed_at: datetime | None
    real_name_level: int
    overseas_restricted: bool
    registered_province: str


@dataclass(frozen=True)
class Relation:
    relation_id: str
    enterprise_code: str
    enterprise_name: str
    role: str
    state: str
    confirming_party: str
    masked_person_name: str
    masked_document_number: str


def _relation(message: binding_pb2.Relation) -> Relation:
    return Relation(
        relation_id=message.relation_id,
        enterprise_code=message.enterprise_code,
        enterprise_name=message.enterprise_name,
        role=types_pb2.Role.Name(message.role),
        state=binding_pb2.RelationState.Name(message.state),
        confirming_party=binding_pb2.ConfirmingParty.Name(message.confirming_party),
        masked_person_name=message.masked_person_name,
        masked_document_number=message.masked_document_number,
    )


@dataclass(frozen=True)
class Project:
    project_number: str
    subject_type: str
    enterprise_code: str
    enterprise_name: str
    tax_authority_name: str

    def as_identity(self) -> Identity:
        return Identity(
            entry="ENTRY_SPECIFIC_SUBJECT",
            enterprise_code=self.enterprise_code,
            enterprise_name=self.enterprise_name,
            subject_type=self.subject_type,
            project_number=self.project_number,
            tax_authority_name=self.tax_authority_name,
        )


def _project(message: binding_pb2.CrossRegionProject) -> Project:
    return Project(
        project_number=message.project_number,
        subject_type=types_pb2.SubjectType.Name(message.subject_type),
        enterprise_code=message.enterprise_code,
        enterprise_name=message.enterprise_name,
        tax_authority_name=message.tax_authority.name,
    )


@dataclass(frozen=True)
class Scanned:
    """What the APP learns when it scans a face ticket's QR code."""

    ticket_id: str
    scan_token: str
    purpose: str
    masked_name: str
    identity_required: bool


@dataclass(frozen=True)
class OutboxMessage:
    channel: str
    purpose: str
    code: str
    text: str
    sent_at: datetime | None


@dataclass(frozen=True)
class PersonIdentity:
    """A person's document and name as typed into a form."""

    document_type: str
    document_number: str
    name: str

    def message(self) -> types_pb2.NamedDocument:
        kind = _enum(types_pb2.DocumentType, self.document_type, "identity.document.type")
        return types_pb2.NamedDocument(
            document=types_pb2.Document(type=kind, number=self.document_number.strip()),
            name=self.name.strip(),
        )


@dataclass(frozen=True)
class LoginTarget:
    """What a password login asks to act as (D1, D5)."""

    entry: str
    enterprise_code: str = ""
    agency_code: str = ""
    subject_type: str = ""
    subject_number: str = ""


def _enum(enum: Any, name: str, field_name: str) -> Any:
    """The enum value of a name a form sent (INVALID_ARGUMENT for anything else)."""
    try:
        value = enum.Value(name)
    except ValueError:
        raise PlatformError(
            Reason.INVALID_ARGUMENT.value,
            MEANINGS[Reason.INVALID_ARGUMENT].text,
            metadata={"field": field_name},
        ) from None
    return value


def _ticket_state(name: int) -> str:
    return face_pb2.TicketState.Name(name).removeprefix("TICKET_STATE_").lower()


# --- the client ----------------------------------------------------------------------------


@dataclass
class Platform:
    """The platform's public API through the gateway (and, for the development APP
    simulator only, the SMS outbox directly)."""

    gateway_target: str
    timeout: float = 10.0
    outbox_target: str = ""
    _channels: list[grpc.Channel] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        channel = self._open(self.gateway_target)
        self._auth = auth_pb2_grpc.AuthServiceStub(channel)
        self._account = auth_pb2_grpc.AccountServiceStub(channel)
        self._binding = binding_pb2_grpc.BindingServiceStub(channel)
        self._sms = sms_pb2_grpc.SmsServiceStub(channel)
        self._face = face_pb2_grpc.FaceServiceStub(channel)
        self._outbox: Any = None
        if self.outbox_target:
            # Development only: the outbox is internal, reached directly like the tests do.
            self._outbox = sms_pb2_grpc.SmsOutboxServiceStub(self._open(self.outbox_target))

    def _open(self, target: str) -> grpc.Channel:
        # Replicas (a comma-separated list) are balanced round robin, as between services.
        channel = open_channel(target)
        self._channels.append(channel)
        return channel

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def _call(self, method: Any, request: Message, caller: Caller, token: str = "") -> Any:
        metadata = [("x-forwarded-for", caller.address)]
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        try:
            if tracing.ENABLED:  # the gateway and the services continue the page's trace
                name = str(getattr(method, "_method", b"grpc").decode()).lstrip("/")
                with tracing.client_span(name, metadata, {"rpc.system": "grpc"}):
                    return method(request, timeout=self.timeout, metadata=metadata)
            return method(request, timeout=self.timeout, metadata=metadata)
        except grpc.RpcError as error:
            raise _error(error) from None

    # --- login (D1-D5) ---------------------------------------------------------------------

    def start_login(
        self, caller: Caller, target: LoginTarget, account: str, password: str
    ) -> LoginStart:
        request = auth_pb2.StartLoginRequest(
            entry=_enum(types_pb2.Entry, target.entry, "entry"),
            account=account.strip(),
            password=password,
            enterprise_code=target.enterprise_code.strip(),
            agency_code=target.agency_code.strip(),
            subject_number=target.subject_number.strip(),
        )
        if target.subject_type:
            request.subject_type = _enum(types_pb2.SubjectType, target.subject_type, "subject_type")
        started = self._call(self._auth.StartLogin, request, caller)
        return LoginStart(
            challenge_id=started.challenge_id,
            steps=_second_steps(started),
            expires_at=_instant(started, "expires_at"),
            subject_required=started.subject_required,
        )

    def search_login_subjects(self, caller: Caller, challenge_id: str, query: str) -> list[Project]:
        """D5, Q23: the fuzzy search during login, over the subjects of the person whose
        password this challenge verified (empty: no relation, the 必填 prompt)."""
        found = self._call(
            self._auth.SearchLoginSubjects,
            auth_pb2.SearchLoginSubjectsRequest(challenge_id=challenge_id, query=query.strip()),
            caller,
        )
        return [_project(p) for p in found.subjects]

    def select_login_subject(
        self, caller: Caller, challenge_id: str, subject_number: str
    ) -> SecondSteps:
        """D5: the chosen subject (RELATION_NOT_FOUND without a relation); step 2 next."""
        selected = self._call(
            self._auth.SelectLoginSubject,
            auth_pb2.SelectLoginSubjectRequest(
                challenge_id=challenge_id, subject_number=subject_number.strip()
            ),
            caller,
        )
        return _second_steps(selected)

    def send_login_code(self, caller: Caller, challenge_id: str) -> CodeSent:
        sent = self._call(
            self._auth.SendLoginCode,
            auth_pb2.SendLoginCodeRequest(challenge_id=challenge_id),
            caller,
        )
        # B6: to the email instead when the person has no phone.
        return CodeSent(sent.masked_email or sent.masked_phone, _instant(sent, "code_expires_at"))

    def complete_login_with_code(self, caller: Caller, challenge_id: str, code: str) -> SignedIn:
        completed = self._call(
            self._auth.CompleteLoginWithCode,
            auth_pb2.CompleteLoginWithCodeRequest(challenge_id=challenge_id, code=code.strip()),
            caller,
        )
        return _signed_in(completed.session)

    def start_login_face(self, caller: Caller, challenge_id: str) -> FaceQr:
        started = self._call(
            self._auth.StartLoginFace,
            auth_pb2.StartLoginFaceRequest(challenge_id=challenge_id),
            caller,
        )
        return _face(started.face)

    def complete_login_with_face(self, caller: Caller, challenge_id: str, proof: str) -> SignedIn:
        completed = self._call(
            self._auth.CompleteLoginWithFace,
            auth_pb2.CompleteLoginWithFaceRequest(challenge_id=challenge_id, proof=proof),
            caller,
        )
        return _signed_in(completed.session)

    def start_subject_face_login(
        self, caller: Caller, subject_type: str, subject_number: str
    ) -> tuple[str, FaceQr]:
        started = self._call(
            self._auth.StartSubjectFaceLogin,
            auth_pb2.StartSubjectFaceLoginRequest(
                subject_type=_enum(types_pb2.SubjectType, subject_type, "subject_type"),
                subject_number=subject_number.strip(),
            ),
            caller,
        )
        return started.challenge_id, _face(started.face)

    def create_qr_login(self, caller: Caller) -> tuple[str, str, datetime | None]:
        created = self._call(self._auth.CreateQrLogin, auth_pb2.CreateQrLoginRequest(), caller)
        return created.qr_login_id, created.qr_payload, _instant(created, "expires_at")

    def get_qr_login(self, caller: Caller, qr_login_id: str) -> QrLoginState:
        found = self._call(
            self._auth.GetQrLogin, auth_pb2.GetQrLoginRequest(qr_login_id=qr_login_id), caller
        )
        state = auth_pb2.QrLoginState.Name(found.state).removeprefix("QR_LOGIN_STATE_").lower()
        signed_in = _signed_in(found.session) if found.HasField("session") else None
        return QrLoginState(state, signed_in)

    def get_ticket(self, caller: Caller, ticket_id: str) -> TicketState:
        ticket = self._call(
            self._face.GetTicket, face_pb2.GetTicketRequest(ticket_id=ticket_id), caller
        ).ticket
        return TicketState(
            state=_ticket_state(ticket.state),
            proof=ticket.proof,
            failure_text=ticket.last_failure.message,
            attempts_left=ticket.attempts_left,
        )

    # --- sessions ------------------------------------------------------------------------

    def refresh(self, caller: Caller, refresh_token: str) -> SignedIn:
        refreshed = self._call(
            self._auth.RefreshSession,
            auth_pb2.RefreshSessionRequest(refresh_token=refresh_token),
            caller,
        )
        return _signed_in(refreshed.session)

    def logout(self, caller: Caller, access_token: str, refresh_token: str) -> None:
        self._call(
            self._auth.Logout,
            auth_pb2.LogoutRequest(refresh_token=refresh_token),
            caller,
            access_token,
        )

    def identities(self, caller: Caller, token: str) -> list[Identity]:
        """身份切换 (F3, F4, F5): everything the person may act as, natural person first."""
        listed = self._call(
            self._binding.ListMyIdentities, binding_pb2.ListMyIdentitiesRequest(), caller, token
        )
        return [_identity(i) for i in listed.identities]

    def switch_identity(self, caller: Caller, token: str, identity: Identity) -> SignedIn:
        switched = self._call(
            self._auth.SwitchIdentity,
            auth_pb2.SwitchIdentityRequest(identity=_identity_pb(identity)),
            caller,
            token,
        )
        return _signed_in(switched.session)

    def related_projects(self, caller: Caller, token: str) -> list[Project]:
        """切换主管税务机关 (D5): the related cross-region projects of this province."""
        listed = self._call(
            self._binding.ListRelatedProjects,
            binding_pb2.ListRelatedProjectsRequest(),
            caller,
            token,
        )
        return [_project(p) for p in listed.projects]

    # --- codes to a number the person types in --------------------------------------------

    def send_code(self, caller: Caller, recipient: str, purpose: str) -> CodeSent:
        """SMS (or, with an @, email) code for registration, adding or recovering a phone."""
        recipient = recipient.strip()
        request = sms_pb2.SendCodeRequest(
            purpose=_enum(types_pb2.VerificationPurpose, purpose, "purpose")
        )
        if "@" in recipient:
            request.email = recipient
        else:
            request.phone = recipient
        sent = self._call(self._sms.SendCode, request, caller)
        return CodeSent(sent.masked_recipient, _instant(sent, "expires_at"), sent.verification_id)

    # --- registration (B1-B6) --------------------------------------------------------------

    def start_registration(
        self, caller: Caller, person: PersonIdentity, *, overseas: bool
    ) -> Registration:
        # A3: the province is the gateway's (the bureau registered through).
        started = self._call(
            self._account.StartRegistration,
            auth_pb2.StartRegistrationRequest(identity=person.message(), overseas=overseas),
            caller,
        )
        return Registration(started.registration_id, started.face_required, started.email_required)

    def start_registration_face(self, caller: Caller, registration_id: str) -> FaceQr:
        started = self._call(
            self._account.StartRegistrationFace,
            auth_pb2.StartRegistrationFaceRequest(registration_id=registration_id),
            caller,
        )
        return _face(started.face)

    def complete_registration(
        self,
        caller: Caller,
        registration_id: str,
        *,
        contact: str,
        verification_id: str,
        code: str,
        face_proof: str,
        password: str,
        username: str = "",
    ) -> int:
        request = auth_pb2.CompleteRegistrationRequest(
            registration_id=registration_id,
            verification_id=verification_id,
            code=code.strip(),
            face_proof=face_proof,
            password=password,
            username=username.strip(),
        )
        if "@" in contact:
            request.email = contact.strip()
        else:
            request.phone = contact.strip()
        completed = self._call(self._account.CompleteRegistration, request, caller)
        level: int = completed.real_name_level
        return level

    # --- forgot password, phone recovery, self-unlock (C5, C6, E1) --------------------------

    def start_password_reset(self, caller: Caller, account: str) -> ResetStart:
        started = self._call(
            self._auth.StartPasswordReset,
            auth_pb2.StartPasswordResetRequest(account=account.strip()),
            caller,
        )
        return ResetStart(
            started.reset_id, started.masked_phone, started.phone_empty, started.masked_email
        )

    def send_password_reset_code(self, caller: Caller, reset_id: str) -> CodeSent:
        sent = self._call(
            self._auth.SendPasswordResetCode,
            auth_pb2.SendPasswordResetCodeRequest(reset_id=reset_id),
            caller,
        )
        return CodeSent(sent.masked_email or sent.masked_phone, _instant(sent, "code_expires_at"))

    def start_password_reset_face(self, caller: Caller, reset_id: str) -> FaceQr:
        started = self._call(
            self._auth.StartPasswordResetFace,
            auth_pb2.StartPasswordResetFaceRequest(reset_id=reset_id),
            caller,
        )
        return _face(started.face)

    def complete_password_reset(
        self,
        caller: Caller,
        reset_id: str,
        new_password: str,
        *,
        code: str = "",
        face_proof: str = "",
    ) -> None:
        request = auth_pb2.CompletePasswordResetRequest(
            reset_id=reset_id, new_password=new_password
        )
        if face_proof:
            request.face_proof = face_proof
        else:
            request.code = code.strip()
        self._call(self._auth.CompletePasswordReset, request, caller)

    def start_phone_recovery(self, caller: Caller, account: str, password: str) -> str:
        started = self._call(
            self._auth.StartPhoneRecovery,
            auth_pb2.StartPhoneRecoveryRequest(account=account.strip(), password=password),
            caller,
        )
        recovery_id: str = started.recovery_id
        return recovery_id

    def complete_phone_recovery(
        self, caller: Caller, recovery_id: str, phone: str, verification_id: str, code: str
    ) -> str:
        done = self._call(
            self._auth.CompletePhoneRecovery,
            auth_pb2.CompletePhoneRecoveryRequest(
                recovery_id=recovery_id,
                phone=phone.strip(),
                verification_id=verification_id,
                code=code.strip(),
            ),
            caller,
        )
        masked: str = done.masked_phone
        return masked

    def start_face_unlock(self, caller: Caller, account: str) -> tuple[str, FaceQr]:
        started = self._call(
            self._auth.StartFaceUnlock,
            auth_pb2.StartFaceUnlockRequest(account=account.strip()),
            caller,
        )
        return started.unlock_id, _face(started.face)

    def complete_face_unlock(self, caller: Caller, unlock_id: str, proof: str) -> None:
        self._call(
            self._auth.CompleteFaceUnlock,
            auth_pb2.CompleteFaceUnlockRequest(unlock_id=unlock_id, proof=proof),
            caller,
        )

    # --- account center (B3, C1-C4) --------------------------------------------------------

    def profile(self, caller: Caller, token: str) -> Profile:
        found = self._call(
            self._account.GetProfile, auth_pb2.GetProfileRequest(), caller, token
        ).profile
        return Profile(
            masked_name=found.masked_name,
            document_type=types_pb2.DocumentType.Name(found.document_type),
            masked_document_number=found.masked_document_number,
            phones=tuple(Phone(p.phone_id, p.masked_number, p.is_default) for p in found.phones),
            masked_email=found.masked_email,
            username=found.username,
            username_changed_at=_instant(found, "username_changed_at"),
            real_name_level=found.real_name_level,
            overseas_restricted=found.overseas_restricted,
            registered_province=found.registered_province,
        )

    def add_phone(
        self,
        caller: Caller,
        token: str,
        phone: str,
        verification_id: str,
        code: str,
        *,
        make_default: bool,
    ) -> Phone:
        added = self._call(
            self._account.AddPhone,
            auth_pb2.AddPhoneRequest(
                phone=phone.strip(),
                verification_id=verification_id,
                code=code.strip(),
                make_default=make_default,
            ),
            caller,
            token,
        ).phone
        return Phone(added.phone_id, added.masked_number, added.is_default)

    def remove_phone(self, caller: Caller, token: str, phone_id: str) -> None:
        self._call(
            self._account.RemovePhone, auth_pb2.RemovePhoneRequest(phone_id=phone_id), caller, token
        )

    def set_default_phone(self, caller: Caller, token: str, phone_id: str) -> None:
        self._call(
            self._account.SetDefaultPhone,
            auth_pb2.SetDefaultPhoneRequest(phone_id=phone_id),
            caller,
            token,
        )

    def set_username(self, caller: Caller, token: str, username: str) -> str:
        done = self._call(
            self._account.SetUsername,
            auth_pb2.SetUsernameRequest(username=username.strip()),
            caller,
            token,
        )
        name: str = done.username
        return name

    def change_password(self, caller: Caller, token: str, old: str, new: str) -> None:
        self._call(
            self._account.ChangePassword,
            auth_pb2.ChangePasswordRequest(old_password=old, new_password=new),
            caller,
            token,
        )

    def start_real_name_upgrade(self, caller: Caller, token: str) -> FaceQr:
        started = self._call(
            self._account.StartRealNameUpgrade,
            auth_pb2.StartRealNameUpgradeRequest(),
            caller,
            token,
        )
        return _face(started.face)

    def complete_real_name_upgrade(self, caller: Caller, token: str, proof: str) -> int:
        done = self._call(
            self._account.CompleteRealNameUpgrade,
            auth_pb2.CompleteRealNameUpgradeRequest(proof=proof),
            caller,
            token,
        )
        level: int = done.real_name_level
        return level

    # --- enterprise authorizations (F1, F2) --------------------------------------------------

    def apply_for_authorization(
        self, caller: Caller, token: str, enterprise_code: str, role: str
    ) -> Relation:
        applied = self._call(
            self._binding.ApplyForAuthorization,
            binding_pb2.ApplyForAuthorizationRequest(
                enterprise_code=enterprise_code.strip(),
                role=_enum(types_pb2.Role, role, "role"),
            ),
            caller,
            token,
        )
        return _relation(applied.relation)

    def add_person(
        self, caller: Caller, token: str, enterprise_code: str, person: PersonIdentity, role: str
    ) -> Relation:
        added = self._call(
            self._binding.AddPerson,
            binding_pb2.AddPersonRequest(
                enterprise_code=enterprise_code,
                person=person.message(),
                role=_enum(types_pb2.Role, role, "role"),
            ),
            caller,
            token,
        )
        return _relation(added.relation)

    def pending_confirmations(self, caller: Caller, token: str) -> list[Relation]:
        listed = self._call(
            self._binding.ListMyPendingConfirmations,
            binding_pb2.ListMyPendingConfirmationsRequest(),
            caller,
            token,
        )
        return [_relation(r) for r in listed.relations]

    def enterprise_relations(
        self, caller: Caller, token: str, enterprise_code: str
    ) -> list[Relation]:
        listed = self._call(
            self._binding.ListEnterpriseRelations,
            binding_pb2.ListEnterpriseRelationsRequest(enterprise_code=enterprise_code),
            caller,
            token,
        )
        return [_relation(r) for r in listed.relations]

    def decide_relation(
        self, caller: Caller, token: str, relation_id: str, *, accept: bool
    ) -> Relation:
        if accept:
            decided = self._call(
                self._binding.ConfirmRelation,
                binding_pb2.ConfirmRelationRequest(relation_id=relation_id),
                caller,
                token,
            )
        else:
            decided = self._call(
                self._binding.RejectRelation,
                binding_pb2.RejectRelationRequest(relation_id=relation_id),
                caller,
                token,
            )
        return _relation(decided.relation)

    # --- the tax APP (development simulator only) ----------------------------------------------

    @staticmethod
    def is_qr_login(payload: str) -> bool:
        return payload.strip().startswith(_QR_LOGIN_PREFIX)

    def scan_ticket(self, caller: Caller, qr_payload: str) -> Scanned:
        scanned = self._call(
            self._face.ScanTicket, face_pb2.ScanTicketRequest(qr_payload=qr_payload.strip()), caller
        )
        return Scanned(
            ticket_id=scanned.ticket_id,
            scan_token=scanned.scan_token,
            purpose=types_pb2.VerificationPurpose.Name(scanned.purpose),
            masked_name=scanned.masked_name,
            identity_required=scanned.identity_required,
        )

    def submit_capture(
        self, caller: Caller, scanned: Scanned, outcome: str, identity: PersonIdentity | None = None
    ) -> TicketState:
        capture = CAPTURES.get(outcome)
        if capture is None:
            raise PlatformError(
                Reason.INVALID_ARGUMENT.value,
                MEANINGS[Reason.INVALID_ARGUMENT].text,
                metadata={"field": "outcome"},
            )
        request = face_pb2.SubmitCaptureRequest(
            ticket_id=scanned.ticket_id, scan_token=scanned.scan_token, capture=capture
        )
        if identity is not None:
            request.identity.CopyFrom(identity.message())
        ticket = self._call(self._face.SubmitCapture, request, caller).ticket
        return TicketState(
            state=_ticket_state(ticket.state),
            proof="",  # the APP never needs the proof: the page collects it
            failure_text=ticket.last_failure.message,
            attempts_left=ticket.attempts_left,
        )

    def confirm_qr_login(self, caller: Caller, app_token: str, qr_payload: str) -> None:
        self._call(
            self._auth.ConfirmQrLogin,
            auth_pb2.ConfirmQrLoginRequest(qr_payload=qr_payload.strip()),
            caller,
            app_token,
        )

    def outbox(self, recipient: str) -> list[OutboxMessage]:
        """What the development outbox delivered to a phone or mailbox, newest first."""
        if self._outbox is None:
            return []
        try:
            listed = self._outbox.ListMessages(
                sms_pb2.ListMessagesRequest(recipient=recipient.strip()), timeout=self.timeout
            )
        except grpc.RpcError as error:
            raise _error(error) from None
        return [
            OutboxMessage(
                channel=sms_pb2.Channel.Name(m.channel),
                purpose=types_pb2.VerificationPurpose.Name(m.purpose),
                code=m.code,
                text=m.text,
                sent_at=_instant(m, "sent_at"),
            )
            for m in listed.messages
        ]
