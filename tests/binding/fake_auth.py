"""A small fake of auth's contract, just what binding calls: InternalAuthService.GetPerson,
ResolvePerson and ListRevokedSessions, AuthService.GetPublicKeys. Served by a real gRPC
server on a free port."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import grpc
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.common.v1 import types_pb2

from etax_platform.clock import SystemClock, to_timestamp
from etax_platform.errors import DomainError, Reason
from etax_platform.revocation import Revocations
from etax_platform.server import GrpcHost, Registration
from etax_platform.tokens import SigningKey
from tests.harness.sessions import RETAIN, authenticator


class FakeAuth:
    def __init__(self, signing_key: SigningKey) -> None:
        self.signing_key = signing_key
        self.calls: Counter[str] = Counter()
        self._persons: dict[str, auth_pb2.Person] = {}
        self._revoked: list[str] = []
        self._lock = threading.Lock()
        internal = _Internal(self)
        public = _Public(self)
        self.host = GrpcHost(
            [
                Registration(
                    "etax.auth.v1.InternalAuthService",
                    lambda server: auth_pb2_grpc.add_InternalAuthServiceServicer_to_server(
                        internal, server
                    ),
                ),
                Registration(
                    "etax.auth.v1.AuthService",
                    lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(public, server),
                ),
            ],
            port=0,
            max_workers=8,
            # Its own session-bearing RPCs are not implemented, but its host checks
            # sessions as every host does.
            authenticator=authenticator(
                lambda: [signing_key.public_jwk()], lambda: list(self._revoked)
            ),
        ).start()
        self.address = self.host.address

    def register(self, document: types_pb2.Document, name: str) -> str:
        """A person registers (B1); returns their person_id."""
        person_id = uuid.uuid4().hex
        with self._lock:
            self._persons[person_id] = auth_pb2.Person(
                person_id=person_id,
                identity=types_pb2.NamedDocument(document=document, name=name),
                real_name_level=4,
            )
        return person_id

    def person(self, person_id: str) -> auth_pb2.Person | None:
        with self._lock:
            return self._persons.get(person_id)

    def find(self, document: types_pb2.Document) -> str | None:
        with self._lock:
            for person in self._persons.values():
                known = person.identity.document
                if (known.type, known.number.upper()) == (document.type, document.number.upper()):
                    return person.person_id
        return None

    def revoke(self, session_id: str) -> None:
        """Logout: the session's tokens are refused by binding within a second."""
        with self._lock:
            self._revoked.append(session_id)

    def revocations(self) -> Revocations:
        with self._lock:
            return Revocations(list(self._revoked), SystemClock().now(), RETAIN)

    def stop(self) -> None:
        self.host.stop(grace=0)


class _Internal(auth_pb2_grpc.InternalAuthServiceServicer):  # type: ignore[misc]
    def __init__(self, fake: FakeAuth) -> None:
        self._fake = fake

    def GetPerson(
        self, request: auth_pb2.GetPersonRequest, context: grpc.ServicerContext
    ) -> auth_pb2.GetPersonResponse:
        self._fake.calls["GetPerson"] += 1
        person = self._fake.person(request.person_id)
        if person is None:
            raise DomainError(Reason.USER_NOT_REGISTERED)
        return auth_pb2.GetPersonResponse(person=person)

    def ResolvePerson(
        self, request: auth_pb2.ResolvePersonRequest, context: grpc.ServicerContext
    ) -> auth_pb2.ResolvePersonResponse:
        self._fake.calls["ResolvePerson"] += 1
        person_id = self._fake.find(request.document)
        return auth_pb2.ResolvePersonResponse(
            registered=person_id is not None, person_id=person_id or ""
        )

    def ListRevokedSessions(
        self, request: auth_pb2.ListRevokedSessionsRequest, context: grpc.ServicerContext
    ) -> auth_pb2.ListRevokedSessionsResponse:
        self._fake.calls["ListRevokedSessions"] += 1
        found = self._fake.revocations()
        response = auth_pb2.ListRevokedSessionsResponse(
            session_ids=found.session_ids, as_of=to_timestamp(found.as_of)
        )
        response.retain_for.FromTimedelta(found.retain_for)
        return response


class _Public(auth_pb2_grpc.AuthServiceServicer):  # type: ignore[misc]
    def __init__(self, fake: FakeAuth) -> None:
        self._fake = fake

    def GetPublicKeys(
        self, request: auth_pb2.GetPublicKeysRequest, context: grpc.ServicerContext
    ) -> auth_pb2.GetPublicKeysResponse:
        self._fake.calls["GetPublicKeys"] += 1
        return auth_pb2.GetPublicKeysResponse(
            keys=[auth_pb2.JsonWebKey(**self._fake.signing_key.public_jwk())]
        )
