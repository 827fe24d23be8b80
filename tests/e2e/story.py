"""The people of the FAQ's stories and what they do at a bureau, through its gateway.

- the web page (电子税务局网页版): gRPC-Web on the public listener;
- the tax APP (税务 APP) and its backend: JSON on the public listener; it scans QR codes and
  submits face captures (the face simulator judges them by their first bytes, docs/face.md);
- the person's phone and mailbox: the SMS outbox, read on the internal listener (mTLS);
- the tax service hall (办税服务大厅) and the core tax system (金税): gRPC over mutual TLS on
  the internal listener with their own client certificates.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.binding.v1 import binding_pb2, binding_pb2_grpc
from etax.common.v1 import types_pb2
from etax.sms.v1 import sms_pb2, sms_pb2_grpc

from etax_platform.clock import ManualClock, to_timestamp
from etax_platform.errors import DomainError, from_rpc_error
from tests.e2e.api import Client, Reply
from tests.harness.gateway import RunningGateway
from tests.harness.numbers import resident_id, uscc

PASSWORD = "Etax.2023pw"
RESIDENT_ID = "DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD"
NATURAL_PERSON = "ENTRY_NATURAL_PERSON"
ENTERPRISE = "ENTRY_ENTERPRISE"
AGENT = "ENTRY_AGENT"
SPECIFIC_SUBJECT = "ENTRY_SPECIFIC_SUBJECT"

# The FAQ's texts, verbatim.
OFFLINE_FIRST_TEXT = "未查询到您的手机号码，请稍后重试或携带相关证件前往办税大厅办理"
PHONE_NOT_FOUND_TEXT = "手机号码不存在，您可以尝试使用证件号码登录"
NOT_REGISTERED_TEXT = "该用户未注册"

AUTHORITIES = {
    "37": types_pb2.TaxAuthority(
        code="13701020000", name="国家税务总局济南市历下区税务局", province="37"
    ),
    "11": types_pb2.TaxAuthority(
        code="11101050000", name="国家税务总局北京市朝阳区税务局", province="11"
    ),
    "32": types_pb2.TaxAuthority(
        code="13201020000", name="国家税务总局南京市玄武区税务局", province="32"
    ),
    # Another city of Shandong: a cross-region project within the province (Q23, F5).
    "37-qingdao": types_pb2.TaxAuthority(
        code="13702030000", name="国家税务总局青岛市市北区税务局", province="37"
    ),
}
REGIONS = {"37": "370102", "11": "110105", "32": "320102"}

_serials = itertools.count(1)


def new_resident_id(region: str = "370102") -> str:
    """A valid resident identity card number (GB 11643), different on every call."""
    serial = next(_serials)
    birth = f"19{60 + serial // 1000 % 40:02d}{1 + serial // 40000 % 12:02d}15"
    return resident_id(serial, birth, region)


def new_phone() -> str:
    return f"135{next(_serials):08d}"


def new_email(name: str = "user") -> str:
    return f"{name}{next(_serials)}@example.com"


def new_uscc(province: str = "37") -> str:
    return uscc(next(_serials), REGIONS[province])


@dataclass
class Person:
    """Somebody in a story: who they are and what they know (password, phone)."""

    name: str
    number: str = field(default_factory=new_resident_id)
    document_type: str = RESIDENT_ID
    phone: str = field(default_factory=new_phone)
    email: str = ""
    password: str = PASSWORD
    username: str = ""
    person_id: str = ""

    @property
    def identity(self) -> dict[str, Any]:
        return {
            "document": {"type": self.document_type, "number": self.number},
            "name": self.name,
        }

    @property
    def document(self) -> types_pb2.Document:
        return types_pb2.Document(
            type=types_pb2.DocumentType.Value(self.document_type),
            number=self.number,
        )

    @property
    def named(self) -> types_pb2.NamedDocument:
        return types_pb2.NamedDocument(document=self.document, name=self.name)


def masked(phone: str) -> str:
    """How pages show a phone: 138****5678."""
    return f"{phone[:3]}****{phone[-4:]}"


def capture(kind: str = "pass") -> str:
    """A face capture as the APP sends it in JSON (base64); its first bytes decide."""
    return base64.b64encode(kind.encode() + b"-capture").decode()


@dataclass
class Session:
    """What the web page or the APP holds after a login."""

    body: dict[str, Any]

    @property
    def token(self) -> str:
        return str(self.body["access_token"])

    @property
    def refresh_token(self) -> str:
        return str(self.body["refresh_token"])

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self.body.get("identity", {}))

    @property
    def province(self) -> str:
        return str(self.body["province"])

    @property
    def person_id(self) -> str:
        return str(self.body["person_id"])


class Handsets:
    """Every phone and mailbox: what the SMS outbox delivered to a number or address."""

    def __init__(self, gateway: RunningGateway) -> None:
        self._channel = gateway.internal_channel("hall")
        self._outbox = sms_pb2_grpc.SmsOutboxServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def messages(self, recipient: str) -> list[sms_pb2.OutboxMessage]:
        """Newest first."""
        return list(
            self._outbox.ListMessages(
                sms_pb2.ListMessagesRequest(recipient=recipient), timeout=10
            ).messages
        )

    def code(self, recipient: str, *, verification_id: str = "", purpose: str = "") -> str:
        """The newest code delivered to the recipient (for that send or purpose)."""
        for message in self.messages(recipient):
            if verification_id and message.verification_id != verification_id:
                continue
            if purpose and types_pb2.VerificationPurpose.Name(message.purpose) != purpose:
                continue
            return str(message.code)
        raise AssertionError(f"no code for {recipient} ({verification_id or purpose})")


class TaxApp:
    """The tax APP on a person's phone: scans QR codes and takes face captures (JSON)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def scan(self, qr_payload: str) -> Reply:
        return self.client.call("FaceService.ScanTicket", {"qr_payload": qr_payload})

    def submit(
        self, scanned: Reply, kind: str = "pass", identity: dict[str, Any] | None = None
    ) -> Reply:
        """One face capture for a scanned ticket; `identity` only for subject-less tickets."""
        request: dict[str, Any] = {
            "ticket_id": scanned["ticket_id"],
            "scan_token": scanned["scan_token"],
            "capture": capture(kind),
        }
        if identity is not None:
            request["identity"] = identity
        return self.client.call("FaceService.SubmitCapture", request)

    def face(
        self, qr_payload: str, kind: str = "pass", identity: dict[str, Any] | None = None
    ) -> Reply:
        """Scans the QR code (no APP login needed, Q14) and submits one capture."""
        return self.submit(self.scan(qr_payload), kind, identity)


class Hall:
    """A tax service hall's (or the core tax system's) internal calls over mTLS."""

    def __init__(self, gateway: RunningGateway, system: str) -> None:
        self._channel: grpc.Channel = gateway.internal_channel(system)
        self.auth = auth_pb2_grpc.InternalAuthServiceStub(self._channel)
        self.binding = binding_pb2_grpc.InternalBindingServiceStub(self._channel)
        self.province = gateway.settings.province

    def close(self) -> None:
        self._channel.close()

    def collect_real_name(self, person: Person) -> auth_pb2.RecordOfflineRealNameResponse:
        """线下实名信息采集 (B2, B5)."""
        return self.auth.RecordOfflineRealName(
            auth_pb2.RecordOfflineRealNameRequest(
                identity=person.named, tax_authority=AUTHORITIES[self.province]
            ),
            timeout=10,
        )

    def import_legacy_person(
        self, person: Person, *, face_verified: bool = False, with_password: bool = True
    ) -> auth_pb2.ImportLegacyPersonResponse:
        """A person of the old system (存量用户), with the old system's password hash."""
        response: auth_pb2.ImportLegacyPersonResponse = self.auth.ImportLegacyPerson(
            auth_pb2.ImportLegacyPersonRequest(
                identity=person.named,
                phone=person.phone,
                legacy_password_hash=legacy_password_hash(person.password) if with_password else "",
                face_verified=face_verified,
                province=self.province,
            ),
            timeout=10,
        )
        person.person_id = response.person_id
        return response

    def confirm_taxpayer_registration(
        self,
        code: str,
        name: str,
        legal_representative: Person,
        financial_officer: Person | None = None,
    ) -> binding_pb2.ConfirmTaxpayerRegistrationResponse:
        """新办纳税人套餐 / 信息确认 (A2): the enterprise and its LR and FO relations."""
        request = binding_pb2.ConfirmTaxpayerRegistrationRequest(
            enterprise_code=code,
            name=name,
            tax_authority=AUTHORITIES[code_province(code)],
            legal_representative=legal_representative.named,
        )
        if financial_officer is not None:
            request.financial_officer.CopyFrom(financial_officer.named)
        response: binding_pb2.ConfirmTaxpayerRegistrationResponse = (
            self.binding.ConfirmTaxpayerRegistration(request, timeout=10)
        )
        return response


def legacy_password_hash(password: str, rounds: int = 29000) -> str:
    """The old system's export format (passlib pbkdf2-sha256)."""
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, rounds)

    def ab64(raw: bytes) -> str:
        return base64.b64encode(raw).decode().rstrip("=").replace("+", ".")

    return f"$pbkdf2-sha256${rounds}${ab64(salt)}${ab64(digest)}"


def code_province(code: str) -> str:
    """The province of an enterprise code's administrative division."""
    return code[2:4]


class Bureau:
    """One province's e-tax bureau as its users reach it through its gateway."""

    def __init__(self, gateway: RunningGateway, clock: ManualClock) -> None:
        self.gateway = gateway
        self.clock = clock
        self.province = gateway.settings.province
        self.web = Client(gateway, "grpc-web")
        self.app = Client(gateway, "json")
        self.tax_app = TaxApp(self.app)
        self.phones = Handsets(gateway)
        self.hall = Hall(gateway, "hall")
        self.core_tax = Hall(gateway, "core-tax")

    def close(self) -> None:
        for closing in (self.web, self.app, self.phones, self.hall, self.core_tax):
            closing.close()

    # --- codes -------------------------------------------------------------------------

    def send_code(self, recipient: str, purpose: str, via: Client | None = None) -> Reply:
        """A code to a number or address the person types in (public SendCode)."""
        contact = {"email": recipient} if "@" in recipient else {"phone": recipient}
        return (via or self.web).call("SmsService.SendCode", {**contact, "purpose": purpose})

    def code_for(self, recipient: str, purpose: str, via: Client | None = None) -> tuple[str, str]:
        """Asks for a code and reads it on the phone: (verification_id, code)."""
        sent = self.send_code(recipient, purpose, via)
        verification_id = sent["verification_id"]
        return verification_id, self.phones.code(recipient, verification_id=verification_id)

    # --- face ------------------------------------------------------------------------------

    def face_proof(self, face: dict[str, Any], kind: str = "pass") -> str:
        """The APP passes the face check; the web page sees the ticket pass and takes the proof."""
        submitted = self.tax_app.face(face["qr_payload"], kind)
        assert submitted.ok, submitted
        ticket = self.web.call("FaceService.GetTicket", {"ticket_id": face["ticket_id"]})
        assert ticket["ticket"]["state"] == "TICKET_STATE_PASSED", ticket
        return str(ticket["ticket"]["proof"])

    # --- registration (B1-B6) ----------------------------------------------------------

    def start_registration(
        self, person: Person, *, overseas: bool = False, via: Client | None = None
    ) -> Reply:
        return (via or self.web).call(
            "AccountService.StartRegistration",
            # A3: the gateway's province decides; a client names none.
            {"identity": person.identity, "overseas": overseas},
        )

    def register(self, person: Person, *, overseas: bool = False, username: str = "") -> Person:
        """用户注册: identity check, face (unless the hall collected the person), the phone (or
        email) by code, the password."""
        started = self.start_registration(person, overseas=overseas)
        registration_id = started["registration_id"]
        proof = ""
        if started["face_required"]:
            face = self.web.call(
                "AccountService.StartRegistrationFace", {"registration_id": registration_id}
            )["face"]
            proof = self.face_proof(face)
        contact = {"email": person.email} if overseas else {"phone": person.phone}
        verification_id, code = self.code_for(
            person.email if overseas else person.phone, "VERIFICATION_PURPOSE_REGISTRATION"
        )
        completed = self.web.call(
            "AccountService.CompleteRegistration",
            {
                "registration_id": registration_id,
                **contact,
                "verification_id": verification_id,
                "code": code,
                "face_proof": proof,
                "password": person.password,
                "username": username,
            },
        )
        person.person_id = completed["person_id"]
        person.username = username or person.username
        return person

    # --- login (D1, D2) ------------------------------------------------------------------

    def start_login(
        self,
        person: Person,
        entry: str = NATURAL_PERSON,
        *,
        account: str | None = None,
        password: str | None = None,
        via: Client | None = None,
        **target: Any,
    ) -> Reply:
        return (via or self.web).call(
            "AuthService.StartLogin",
            {
                "entry": entry,
                "account": person.number if account is None else account,
                "password": person.password if password is None else password,
                "province": self.province,
                **target,
            },
        )

    def login(
        self,
        person: Person,
        entry: str = NATURAL_PERSON,
        *,
        account: str | None = None,
        phone: str | None = None,
        via: Client | None = None,
        **target: Any,
    ) -> Session:
        """Password, then the SMS code sent to the phone the page shows masked (D2)."""
        client = via or self.web
        started = self.start_login(person, entry, account=account, via=client, **target)
        challenge_id = started["challenge_id"]
        sent = client.call("AuthService.SendLoginCode", {"challenge_id": challenge_id})
        assert sent.ok, sent
        code = self.phones.code(phone or person.phone, purpose="VERIFICATION_PURPOSE_LOGIN")
        completed = client.call(
            "AuthService.CompleteLoginWithCode", {"challenge_id": challenge_id, "code": code}
        )
        return Session(completed["session"])

    def login_by_face(
        self,
        person: Person,
        entry: str = NATURAL_PERSON,
        *,
        account: str | None = None,
        via: Client | None = None,
        **target: Any,
    ) -> Session:
        """Password, then scan verification (扫码验证): the APP scans and checks the face."""
        client = via or self.web
        started = self.start_login(person, entry, account=account, via=client, **target)
        challenge_id = started["challenge_id"]
        face = client.call("AuthService.StartLoginFace", {"challenge_id": challenge_id})["face"]
        proof = self.face_proof(face)
        completed = client.call(
            "AuthService.CompleteLoginWithFace", {"challenge_id": challenge_id, "proof": proof}
        )
        return Session(completed["session"])

    # --- account center ----------------------------------------------------------------------

    def profile(self, session: Session) -> dict[str, Any]:
        profile: dict[str, Any] = self.web.call("AccountService.GetProfile", token=session.token)[
            "profile"
        ]
        return profile

    def add_phone(self, session: Session, phone: str, *, make_default: bool = False) -> Reply:
        verification_id, code = self.code_for(phone, "VERIFICATION_PURPOSE_PHONE_ADD")
        return self.web.call(
            "AccountService.AddPhone",
            {
                "phone": phone,
                "verification_id": verification_id,
                "code": code,
                "make_default": make_default,
            },
            token=session.token,
        )

    def identities(self, session: Session) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = self.web.call(
            "BindingService.ListMyIdentities", {}, token=session.token
        )["identities"]
        return listed

    def pending(self, session: Session) -> list[dict[str, Any]]:
        relations: list[dict[str, Any]] = self.web.call(
            "BindingService.ListMyPendingConfirmations", {}, token=session.token
        )["relations"]
        return relations

    def confirm(self, session: Session, relation_id: str) -> Reply:
        return self.web.call(
            "BindingService.ConfirmRelation", {"relation_id": relation_id}, token=session.token
        )

    def confirm_all_pending(self, person: Person) -> Session:
        """Logs in as a natural person and confirms what waits in the account center.

        Set-up steps log in by scan verification, so they spend none of the person's five
        SMS codes per ten minutes (E2) that the story itself may need."""
        session = self.login_by_face(person)
        for relation in self.pending(session):
            assert self.confirm(session, relation["relation_id"]).ok
        return session

    # --- enterprises ---------------------------------------------------------------------

    def new_enterprise(
        self,
        code: str,
        legal_representative: Person,
        financial_officer: Person | None = None,
        name: str = "山东测试建设有限公司",
    ) -> binding_pb2.ConfirmTaxpayerRegistrationResponse:
        """The core tax system confirms the registration (A2); the registered legal
        representative and financial officer confirm their relations (F2)."""
        confirmed = self.core_tax.confirm_taxpayer_registration(
            code, name, legal_representative, financial_officer
        )
        for person in (legal_representative, financial_officer):
            if person is not None and person.person_id:
                self.confirm_all_pending(person)
        return confirmed

    def add_person(
        self, code: str, manager: Person, person: Person, role: str = "ROLE_TAX_OFFICER"
    ) -> dict[str, Any]:
        """The legal representative or financial officer adds a person at 企业业务—账户中心."""
        session = self.login_by_face(manager, ENTERPRISE, enterprise_code=code)
        relation: dict[str, Any] = self.web.call(
            "BindingService.AddPerson",
            {"enterprise_code": code, "person": person.identity, "role": role},
            token=session.token,
        )["relation"]
        return relation

    def add_tax_officer(self, code: str, manager: Person, officer: Person) -> None:
        """F1(b): added by the manager, confirmed by the officer in the account center."""
        self.add_person(code, manager, officer)
        self.confirm_all_pending(officer)

    def agency_forms(
        self,
        agency_code: str,
        agents: tuple[Person, ...],
        clients: dict[str, tuple[Person, ...]],
        name: str = "山东诚信税务师事务所有限公司",
    ) -> None:
        """F4: 《涉税专业服务机构（人员）基本信息采集表》 listing the agents, and one
        《涉税专业服务协议要素信息采集表》 per client naming the agents who serve it."""
        self.core_tax.binding.SubmitAgencyInformation(
            binding_pb2.SubmitAgencyInformationRequest(
                agency_code=agency_code, name=name, agents=[p.named for p in agents]
            ),
            timeout=10,
        )
        now = self.clock.now()
        for client_code, serving in clients.items():
            self.core_tax.binding.SubmitAgencyAgreement(
                binding_pb2.SubmitAgencyAgreementRequest(
                    agency_code=agency_code,
                    client_code=client_code,
                    agents=[p.document for p in serving],
                    valid_from=to_timestamp(now - timedelta(days=1)),
                    valid_until=to_timestamp(now + timedelta(days=365)),
                ),
                timeout=10,
            )

    def record_project(
        self,
        code: str,
        project_number: str,
        authority: str,
        subject_type: str = "SUBJECT_TYPE_CROSS_REGION_INSPECTION",
        handlers: tuple[Person, ...] = (),
        contacts: tuple[Person, ...] = (),
    ) -> binding_pb2.RecordCrossRegionProjectResponse:
        """《跨区域涉税事项报告表》 as the core tax system records it (D5, F5)."""
        response: binding_pb2.RecordCrossRegionProjectResponse = (
            self.core_tax.binding.RecordCrossRegionProject(
                binding_pb2.RecordCrossRegionProjectRequest(
                    enterprise_code=code,
                    subject_type=types_pb2.SubjectType.Value(subject_type),
                    project_number=project_number,
                    tax_authority=AUTHORITIES[authority],
                    handlers=[p.named for p in handlers],
                    contacts=[p.named for p in contacts],
                ),
                timeout=10,
            )
        )
        return response

    # --- time ------------------------------------------------------------------------------

    def later(self, delta: timedelta) -> None:
        """Moves the services' clock forward (never back: Envoy uses the real clock)."""
        self.clock.advance(delta)


def refusal(call: Any, request: Any) -> DomainError:
    """Calls an internal RPC that must fail with a domain error, and returns it."""
    try:
        call(request, timeout=10)
    except grpc.RpcError as error:
        refused = from_rpc_error(error)
        assert refused is not None, error
        return refused
    raise AssertionError(f"{request} succeeded")
