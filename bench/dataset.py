"""Data set-up for `make load` and `make bench`: persons, enterprises, agents, projects,
login challenges and sessions, written as the files scripts/load.py expects.

Persons come in through InternalAuthService.ImportLegacyPerson (face_verified: level 4)
with a password hash in the accepted Argon2id format, made once with the parameters auth
uses, so nothing is hashed per person. Person i has the phone 1390000NNNN (NNNN = i) and
the password `Load-test-2026`, which is what deploy/ghz/login-start.json logs in with.
Enterprises, an agency with its agreements and cross-region projects come through
InternalBindingService, so CheckAccess has agent and specific-subject targets that need no
person's confirmation. Login challenges, refresh and access tokens come from logging in
(AuthService), when the auth service serves it.

Idempotent against a running platform: a person already imported is looked up instead.
Challenges and refresh tokens are single use, so every run makes new ones; each login
sends one SMS code to its person's phone, which E2 allows 5 times per 10 minutes.

    python -m bench.dataset [--persons 1000] [--challenges 400] [--sessions 400]
        [--out var/load] [--auth 127.0.0.1:50051 --binding ... --sms ... --face ...]
        [--internal 127.0.0.1:8443 --certs deploy/certs]   # mTLS instead of direct
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.binding.v1 import binding_pb2, binding_pb2_grpc
from etax.common.v1 import types_pb2
from etax.face.v1 import face_pb2, face_pb2_grpc
from etax.sms.v1 import sms_pb2, sms_pb2_grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from etax_platform import topology
from etax_platform.documents import gb11643_check_character
from etax_platform.enterprise_codes import USCC_ALPHABET, uscc_check_character
from etax_platform.errors import Reason, from_rpc_error
from etax_platform.settings import REPO_ROOT

PASSWORD = "Load-test-2026"  # noqa: S105 - the load-test persons' password (README)
PROVINCE = "37"
PROJECT_PROVINCE = "11"
GROUP_SIZE = 20
CALL_TIMEOUT = 30.0
AUTHORITIES = {
    "37": types_pb2.TaxAuthority(
        code="13701020000", name="国家税务总局济南市历下区税务局", province="37"
    ),
    "11": types_pb2.TaxAuthority(
        code="11101050000", name="国家税务总局北京市朝阳区税务局", province="11"
    ),
}
_SURNAMES = "王李张刘陈杨赵黄周吴"
_GIVEN = "伟芳娜敏静丽强磊军洋"
T = TypeVar("T")


def phone(i: int) -> str:
    """Person i's phone, as deploy/ghz/login-start.json logs in with (i < 10000)."""
    return f"1390000{i:04d}"


def resident_id(i: int) -> str:
    """A valid resident identity card number, distinct for every i."""
    born = date(1960, 1, 1) + timedelta(days=i // 1000)
    first_17 = f"370102{born:%Y%m%d}{i % 1000:03d}"
    return first_17 + gb11643_check_character(first_17)


def uscc(serial: int) -> str:
    organisation = "MA" + "".join(USCC_ALPHABET[(serial // 31**k) % 31] for k in range(6, -1, -1))
    first_17 = "91370102" + organisation
    return first_17 + uscc_check_character(first_17)


def legacy_password_hash(password: str = PASSWORD) -> str:
    """Argon2id PHC string with the parameters auth uses (so login never re-hashes)."""
    import os  # noqa: PLC0415

    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id  # noqa: PLC0415

    from services.auth.passwords import OWASP  # noqa: PLC0415 - its parameters, not its code

    kdf = Argon2id(
        salt=os.urandom(OWASP.salt_bytes),
        length=OWASP.hash_bytes,
        iterations=OWASP.iterations,
        lanes=OWASP.lanes,
        memory_cost=OWASP.memory_kib,
    )
    return kdf.derive_phc_encoded(password.encode())


def as_json(message: Message) -> dict[str, Any]:
    """A request as ghz reads it (proto field names, enum names)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


@dataclass(frozen=True)
class Person:
    index: int
    person_id: str
    document: types_pb2.NamedDocument

    @property
    def phone(self) -> str:
        return phone(self.index)


@dataclass
class LoadData:
    persons: list[Person] = field(default_factory=list)
    access_targets: list[binding_pb2.CheckAccessRequest] = field(default_factory=list)
    challenges: list[auth_pb2.CompleteLoginWithCodeRequest] = field(default_factory=list)
    refresh_tokens: list[auth_pb2.RefreshSessionRequest] = field(default_factory=list)
    access_token: str = ""
    login_available: bool = False


class Channels:
    """Channels to the four services: direct, or through the gateway's internal listener
    (mutual TLS as the hall), which routes every etax service."""

    def __init__(self, auth: str, binding: str, sms: str, face: str) -> None:
        self._targets = {"auth": auth, "binding": binding, "sms": sms, "face": face}
        self._channels: dict[str, grpc.Channel] = {}
        self._credentials: grpc.ChannelCredentials | None = None

    @staticmethod
    def direct(address: Callable[[str], str]) -> Channels:
        """Straight to each service, at `address(name)` (a platform's `address`)."""
        return Channels(*(address(s) for s in ("auth", "binding", "sms", "face")))

    @staticmethod
    def internal_listener(address: str, certs: Path, system: str = "hall") -> Channels:
        channels = Channels(address, address, address, address)
        channels._credentials = grpc.ssl_channel_credentials(
            root_certificates=(certs / "ca.pem").read_bytes(),
            private_key=(certs / f"{system}-key.pem").read_bytes(),
            certificate_chain=(certs / f"{system}.pem").read_bytes(),
        )
        return channels

    def channel(self, service: str) -> grpc.Channel:
        if service not in self._channels:
            target = self._targets[service]
            if self._credentials is None:
                self._channels[service] = grpc.insecure_channel(target)
            else:
                self._channels[service] = grpc.secure_channel(
                    target,
                    self._credentials,
                    options=[("grpc.ssl_target_name_override", "localhost")],
                )
        return self._channels[service]

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def _parallel(work: Callable[[T], Any], items: Iterable[T], threads: int = 8) -> list[Any]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(work, items))


def import_persons(channels: Channels, count: int) -> list[Person]:
    """Persons 0..count-1 (level 4, phone and password as above)."""
    internal = auth_pb2_grpc.InternalAuthServiceStub(channels.channel("auth"))
    password_hash = legacy_password_hash()

    def one(i: int) -> Person:
        named = types_pb2.NamedDocument(
            document=types_pb2.Document(
                type=types_pb2.DOCUMENT_TYPE_RESIDENT_IDENTITY_CARD, number=resident_id(i)
            ),
            name=_SURNAMES[i % 10] + _GIVEN[i // 10 % 10] + _GIVEN[i // 100 % 10],
        )
        request = auth_pb2.ImportLegacyPersonRequest(
            identity=named,
            phone=phone(i),
            legacy_password_hash=password_hash,
            face_verified=True,
            province=PROVINCE,
        )
        try:
            person_id = internal.ImportLegacyPerson(request, timeout=CALL_TIMEOUT).person_id
        except grpc.RpcError as error:
            domain_error = from_rpc_error(error)
            if domain_error is None or domain_error.reason != Reason.ALREADY_REGISTERED:
                raise
            resolved = internal.ResolvePerson(
                auth_pb2.ResolvePersonRequest(document=named.document), timeout=CALL_TIMEOUT
            )
            person_id = resolved.person_id
        return Person(i, person_id, named)

    return _parallel(one, range(count))


def set_up_relations(
    channels: Channels, persons: Sequence[Person]
) -> list[binding_pb2.CheckAccessRequest]:
    """Per group of 20 persons: a client enterprise, an agency whose agents they are with
    an agreement for that client, and a cross-region project in Beijing they handle.
    Returns two CheckAccess requests per person (agent entry, specific subject)."""
    internal = binding_pb2_grpc.InternalBindingServiceStub(channels.channel("binding"))
    groups = [persons[g : g + GROUP_SIZE] for g in range(0, len(persons), GROUP_SIZE)]
    until = datetime.now(UTC) + timedelta(days=365)

    def one(numbered: tuple[int, Sequence[Person]]) -> list[binding_pb2.CheckAccessRequest]:
        g, group = numbered
        client, agency, project = uscc(2 * g + 1), uscc(2 * g + 2), f"XM-{PROJECT_PROVINCE}-{g:06d}"
        internal.ConfirmTaxpayerRegistration(
            binding_pb2.ConfirmTaxpayerRegistrationRequest(
                enterprise_code=client,
                name=f"压测客户企业{g}有限公司",
                tax_authority=AUTHORITIES[PROVINCE],
                legal_representative=group[0].document,
            ),
            timeout=CALL_TIMEOUT,
        )
        internal.SubmitAgencyInformation(
            binding_pb2.SubmitAgencyInformationRequest(
                agency_code=agency,
                name=f"压测税务师事务所{g}",
                agents=[p.document for p in group],
            ),
            timeout=CALL_TIMEOUT,
        )
        agreement = binding_pb2.SubmitAgencyAgreementRequest(
            agency_code=agency,
            client_code=client,
            agents=[p.document.document for p in group],
        )
        agreement.valid_until.FromDatetime(until)
        internal.SubmitAgencyAgreement(agreement, timeout=CALL_TIMEOUT)
        internal.RecordCrossRegionProject(
            binding_pb2.RecordCrossRegionProjectRequest(
                enterprise_code=client,
                subject_type=types_pb2.SUBJECT_TYPE_CROSS_REGION_INSPECTION,
                project_number=project,
                tax_authority=AUTHORITIES[PROJECT_PROVINCE],
                handlers=[p.document for p in group],
            ),
            timeout=CALL_TIMEOUT,
        )
        targets = []
        for person in group:
            targets.append(
                binding_pb2.CheckAccessRequest(
                    person_id=person.person_id,
                    target=binding_pb2.Target(
                        entry=types_pb2.ENTRY_AGENT,
                        agency_code=agency,
                        client_code=client,
                        province=PROVINCE,
                    ),
                )
            )
            targets.append(
                binding_pb2.CheckAccessRequest(
                    person_id=person.person_id,
                    target=binding_pb2.Target(
                        entry=types_pb2.ENTRY_SPECIFIC_SUBJECT,
                        subject_type=types_pb2.SUBJECT_TYPE_CROSS_REGION_INSPECTION,
                        subject_number=project,
                        province=PROJECT_PROVINCE,
                    ),
                )
            )
        return targets

    return [t for targets in _parallel(one, enumerate(groups), threads=4) for t in targets]


def face_tickets(channels: Channels, count: int) -> list[face_pb2.GetTicketRequest]:
    """Open face tickets (as auth creates them for a login's scan step)."""
    internal = face_pb2_grpc.InternalFaceServiceStub(channels.channel("face"))

    def one(i: int) -> face_pb2.GetTicketRequest:
        created = internal.CreateTicket(
            face_pb2.CreateTicketRequest(
                purpose=types_pb2.VERIFICATION_PURPOSE_LOGIN, subject_ref=f"bench-{i}"
            ),
            timeout=CALL_TIMEOUT,
        )
        return face_pb2.GetTicketRequest(ticket_id=created.ticket_id)

    return _parallel(one, range(count))


# --- login (AuthService) ------------------------------------------------------------------


def login_available(channels: Channels) -> bool:
    """Whether the auth service serves AuthService (login) yet."""
    stub = auth_pb2_grpc.AuthServiceStub(channels.channel("auth"))
    try:
        stub.GetPublicKeys(auth_pb2.GetPublicKeysRequest(), timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        if error.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE):
            return False
        raise
    return True


def start_login(channels: Channels, person: Person) -> auth_pb2.CompleteLoginWithCodeRequest:
    """Login step 1 and the SMS code of step 2, read from the development outbox."""
    auth = auth_pb2_grpc.AuthServiceStub(channels.channel("auth"))
    outbox = sms_pb2_grpc.SmsOutboxServiceStub(channels.channel("sms"))
    started = auth.StartLogin(
        auth_pb2.StartLoginRequest(
            entry=types_pb2.ENTRY_NATURAL_PERSON,
            account=person.phone,
            password=PASSWORD,
            province=PROVINCE,
        ),
        timeout=CALL_TIMEOUT,
    )
    auth.SendLoginCode(
        auth_pb2.SendLoginCodeRequest(challenge_id=started.challenge_id), timeout=CALL_TIMEOUT
    )
    messages = outbox.ListMessages(
        sms_pb2.ListMessagesRequest(recipient=person.phone), timeout=CALL_TIMEOUT
    ).messages
    login_codes = [m for m in messages if m.purpose == types_pb2.VERIFICATION_PURPOSE_LOGIN]
    if not login_codes:
        raise RuntimeError(f"no login code in the outbox for person {person.index}")
    return auth_pb2.CompleteLoginWithCodeRequest(
        challenge_id=started.challenge_id, code=login_codes[0].code
    )


def log_in(channels: Channels, person: Person) -> auth_pb2.Session:
    auth = auth_pb2_grpc.AuthServiceStub(channels.channel("auth"))
    completed: auth_pb2.CompleteLoginWithCodeResponse = auth.CompleteLoginWithCode(
        start_login(channels, person), timeout=CALL_TIMEOUT
    )
    return completed.session


def set_up(
    channels: Channels,
    *,
    persons: int,
    challenges: int,
    sessions: int,
    log: Callable[[str], None] = print,
) -> LoadData:
    """Everything the load scenarios need; login material only when login is served.

    Sessions and challenges go round the persons; each costs one SMS code to the person's
    phone, and E2 allows 5 per phone in 10 minutes. Challenges (and their codes) expire
    after 5 minutes: make them shortly before they are used.
    """
    if challenges + sessions > 5 * persons:
        raise ValueError("more than 5 login codes per phone: add persons")
    data = LoadData()
    data.persons = import_persons(channels, persons)
    log(f"persons: {len(data.persons)} imported")
    data.access_targets = set_up_relations(channels, data.persons)
    log(f"access targets: {len(data.access_targets)}")
    data.login_available = login_available(channels)
    if not data.login_available:
        log("login: AuthService is not served yet; login scenarios have no data")
        return data

    logged_in = _parallel(
        lambda n: log_in(channels, data.persons[n % persons]), range(max(sessions, 1))
    )
    data.refresh_tokens = [
        auth_pb2.RefreshSessionRequest(refresh_token=s.refresh_token) for s in logged_in
    ][:sessions]
    # Persons are agents of a client and handlers of a project (set_up_relations).
    data.access_token = logged_in[-1].access_token
    # Last: a challenge and its code expire first (5 minutes).
    data.challenges = login_challenges(channels, data.persons, challenges, first=sessions)
    log(f"login: {len(data.refresh_tokens)} sessions, {len(data.challenges)} challenges")
    return data


def login_challenges(
    channels: Channels, persons: Sequence[Person], count: int, *, first: int = 0
) -> list[auth_pb2.CompleteLoginWithCodeRequest]:
    """`count` started logins with their SMS codes, persons first, first+1, ... (round)."""
    return _parallel(
        lambda n: start_login(channels, persons[(first + n) % len(persons)]), range(count)
    )


def write_load_files(data: LoadData, out: Path) -> list[Path]:
    """The files scripts/load.py reads (<scenario>.data.json / .metadata.json)."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {
        "access-check.data.json": [as_json(t) for t in data.access_targets],
    }
    if data.login_available:
        files["login-complete-sms.data.json"] = [as_json(c) for c in data.challenges]
        files["token-refresh.data.json"] = [as_json(r) for r in data.refresh_tokens]
        files["identities-list.metadata.json"] = {"authorization": f"Bearer {data.access_token}"}
    written = []
    for name in (
        "access-check.data.json",
        "login-complete-sms.data.json",
        "token-refresh.data.json",
        "identities-list.metadata.json",
    ):
        path = out / name
        if name in files:
            path.write_text(json.dumps(files[name], ensure_ascii=False))
            written.append(path)
        else:
            path.unlink(missing_ok=True)  # stale single-use material from an earlier run
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in topology.GRPC_SERVICES:
        parser.add_argument(f"--{name}", default=topology.default_address(name))
    parser.add_argument("--internal", help="the gateway's internal listener (mTLS) instead")
    parser.add_argument("--certs", type=Path, default=REPO_ROOT / "deploy" / "certs")
    parser.add_argument("--persons", type=int, default=1000)
    parser.add_argument("--challenges", type=int, default=400, help="for login-complete-sms")
    parser.add_argument("--sessions", type=int, default=400, help="for token-refresh")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "load")
    args = parser.parse_args(argv)
    if not 0 < args.persons <= 10_000:
        parser.error("--persons: 1..10000 (phones 1390000NNNN)")
    channels = (
        Channels.internal_listener(args.internal, args.certs)
        if args.internal
        else Channels(args.auth, args.binding, args.sms, args.face)
    )
    try:
        data = set_up(
            channels,
            persons=args.persons,
            challenges=args.challenges,
            sessions=args.sessions,
        )
    except grpc.RpcError as error:
        print(f"data set-up failed: {error.code()} {error.details()}", file=sys.stderr)
        return 1
    finally:
        channels.close()
    for path in write_load_files(data, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
