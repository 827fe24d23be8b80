"""gRPC servicers of etax.auth.v1 AccountService and InternalAuthService: protobuf in,
domain values to the use cases, protobuf out. Nothing else lives here."""

from __future__ import annotations

from datetime import datetime

import grpc
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.common.v1 import types_pb2
from google.protobuf import timestamp_pb2

from etax_platform.clock import Clock, to_timestamp
from etax_platform.documents import Document, parse_document
from etax_platform.identifiers import normalize_phone
from etax_platform.pii import mask_document, mask_email, mask_name, mask_phone
from etax_platform.tokens import TokenVerifier, require_claims
from services.auth.account import AccountCenter
from services.auth.dependencies import FaceChallenge
from services.auth.domain import (
    PhoneRecord,
    normalize_name,
    require_province,
    require_tax_authority,
)
from services.auth.internal import InternalAccounts
from services.auth.registration import Completion, Registrations


def _timestamp(instant: datetime | None) -> timestamp_pb2.Timestamp | None:
    return None if instant is None else to_timestamp(instant)


class _Convert:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def document(self, message: types_pb2.Document, prefix: str) -> Document:
        return parse_document(
            message.type,
            message.number,
            today=self._clock.now().date(),
            type_field=f"{prefix}.type",
            number_field=f"{prefix}.number",
        )

    def identity(
        self, message: types_pb2.NamedDocument, prefix: str = "identity"
    ) -> tuple[Document, str]:
        document = self.document(message.document, f"{prefix}.document")
        return document, normalize_name(message.name, f"{prefix}.name")


def _face(challenge: FaceChallenge) -> auth_pb2.FaceChallenge:
    return auth_pb2.FaceChallenge(
        ticket_id=challenge.ticket_id,
        qr_payload=challenge.qr_payload,
        expires_at=_timestamp(challenge.expires_at),
    )


def _phone(phone: PhoneRecord) -> auth_pb2.Phone:
    return auth_pb2.Phone(
        phone_id=phone.phone_id,
        masked_number=mask_phone(phone.number),
        is_default=phone.is_default,
        verified_at=_timestamp(phone.verified_at),
    )


class AccountServicer(auth_pb2_grpc.AccountServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        registrations: Registrations,
        account: AccountCenter,
        verifier: TokenVerifier,
        clock: Clock,
    ) -> None:
        self._registrations = registrations
        self._account = account
        self._verifier = verifier
        self._convert = _Convert(clock)

    def _person_id(self, context: grpc.ServicerContext) -> str:
        return require_claims(self._verifier, context).person_id

    def StartRegistration(
        self, request: auth_pb2.StartRegistrationRequest, context: grpc.ServicerContext
    ) -> auth_pb2.StartRegistrationResponse:
        document, name = self._convert.identity(request.identity)
        started = self._registrations.start(
            document,
            name,
            overseas=request.overseas,
            province=require_province(request.province),
        )
        return auth_pb2.StartRegistrationResponse(
            registration_id=started.registration_id,
            face_required=started.face_required,
            email_required=started.email_required,
            expires_at=_timestamp(started.expires_at),
        )

    def StartRegistrationFace(
        self, request: auth_pb2.StartRegistrationFaceRequest, context: grpc.ServicerContext
    ) -> auth_pb2.StartRegistrationFaceResponse:
        challenge = self._registrations.start_face(request.registration_id)
        return auth_pb2.StartRegistrationFaceResponse(face=_face(challenge))

    def CompleteRegistration(
        self, request: auth_pb2.CompleteRegistrationRequest, context: grpc.ServicerContext
    ) -> auth_pb2.CompleteRegistrationResponse:
        registered = self._registrations.complete(
            Completion(
                registration_id=request.registration_id,
                phone=request.phone,
                email=request.email,
                verification_id=request.verification_id,
                code=request.code,
                face_proof=request.face_proof,
                password=request.password,
                username=request.username,
            )
        )
        return auth_pb2.CompleteRegistrationResponse(
            person_id=registered.person_id, real_name_level=registered.real_name_level
        )

    def GetProfile(
        self, request: auth_pb2.GetProfileRequest, context: grpc.ServicerContext
    ) -> auth_pb2.GetProfileResponse:
        profile = self._account.profile(self._person_id(context))
        person = profile.person
        return auth_pb2.GetProfileResponse(
            profile=auth_pb2.Profile(
                person_id=person.person_id,
                masked_name=mask_name(person.name),
                document_type=int(person.document.type),  # type: ignore[arg-type]
                masked_document_number=mask_document(person.document.number),
                phones=[_phone(phone) for phone in profile.phones],
                masked_email=mask_email(person.email) if person.email else "",
                username=person.username or "",
                username_changed_at=_timestamp(person.username_changed_at),
                real_name_level=person.real_name_level,
                overseas_restricted=person.overseas_restricted,
                registered_province=person.registered_province,
            )
        )

    def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: grpc.ServicerContext
    ) -> auth_pb2.ChangePasswordResponse:
        self._account.change_password(
            self._person_id(context), request.old_password, request.new_password
        )
        return auth_pb2.ChangePasswordResponse()

    def SetUsername(
        self, request: auth_pb2.SetUsernameRequest, context: grpc.ServicerContext
    ) -> auth_pb2.SetUsernameResponse:
        username = self._account.set_username(self._person_id(context), request.username)
        return auth_pb2.SetUsernameResponse(username=username)

    def AddPhone(
        self, request: auth_pb2.AddPhoneRequest, context: grpc.ServicerContext
    ) -> auth_pb2.AddPhoneResponse:
        phone = self._account.add_phone(
            self._person_id(context),
            request.phone,
            request.verification_id,
            request.code,
            request.make_default,
        )
        return auth_pb2.AddPhoneResponse(phone=_phone(phone))

    def RemovePhone(
        self, request: auth_pb2.RemovePhoneRequest, context: grpc.ServicerContext
    ) -> auth_pb2.RemovePhoneResponse:
        self._account.remove_phone(self._person_id(context), request.phone_id)
        return auth_pb2.RemovePhoneResponse()

    def SetDefaultPhone(
        self, request: auth_pb2.SetDefaultPhoneRequest, context: grpc.ServicerContext
    ) -> auth_pb2.SetDefaultPhoneResponse:
        self._account.set_default_phone(self._person_id(context), request.phone_id)
        return auth_pb2.SetDefaultPhoneResponse()

    def StartRealNameUpgrade(
        self, request: auth_pb2.StartRealNameUpgradeRequest, context: grpc.ServicerContext
    ) -> auth_pb2.StartRealNameUpgradeResponse:
        challenge = self._account.start_real_name_upgrade(self._person_id(context))
        return auth_pb2.StartRealNameUpgradeResponse(face=_face(challenge))

    def CompleteRealNameUpgrade(
        self, request: auth_pb2.CompleteRealNameUpgradeRequest, context: grpc.ServicerContext
    ) -> auth_pb2.CompleteRealNameUpgradeResponse:
        level = self._account.complete_real_name_upgrade(self._person_id(context), request.proof)
        return auth_pb2.CompleteRealNameUpgradeResponse(real_name_level=level)


class InternalAuthServicer(auth_pb2_grpc.InternalAuthServiceServicer):  # type: ignore[misc]
    """ImportLegacyCredential (D7) is left to the login issue: UNIMPLEMENTED until then."""

    def __init__(self, internal: InternalAccounts, clock: Clock) -> None:
        self._internal = internal
        self._convert = _Convert(clock)

    def RecordOfflineRealName(
        self, request: auth_pb2.RecordOfflineRealNameRequest, context: grpc.ServicerContext
    ) -> auth_pb2.RecordOfflineRealNameResponse:
        document, name = self._convert.identity(request.identity)
        authority = request.tax_authority
        require_tax_authority(authority.code, authority.province, authority.name)
        person_id = self._internal.record_offline_real_name(
            document, name, (authority.code, authority.name, authority.province)
        )
        return auth_pb2.RecordOfflineRealNameResponse(person_id=person_id or "")

    def ImportLegacyPerson(
        self, request: auth_pb2.ImportLegacyPersonRequest, context: grpc.ServicerContext
    ) -> auth_pb2.ImportLegacyPersonResponse:
        document, name = self._convert.identity(request.identity)
        person_id, level = self._internal.import_legacy_person(
            document,
            name,
            phone=normalize_phone(request.phone) if request.phone else None,
            legacy_password_hash=request.legacy_password_hash,
            face_verified=request.face_verified,
            province=require_province(request.province),
        )
        return auth_pb2.ImportLegacyPersonResponse(person_id=person_id, real_name_level=level)

    def GetPerson(
        self, request: auth_pb2.GetPersonRequest, context: grpc.ServicerContext
    ) -> auth_pb2.GetPersonResponse:
        person = self._internal.get_person(request.person_id)
        return auth_pb2.GetPersonResponse(
            person=auth_pb2.Person(
                person_id=person.person_id,
                identity=types_pb2.NamedDocument(
                    document=types_pb2.Document(
                        type=int(person.document.type),  # type: ignore[arg-type]
                        number=person.document.number,
                    ),
                    name=person.name,
                ),
                real_name_level=person.real_name_level,
                overseas_restricted=person.overseas_restricted,
                registered_province=person.registered_province,
            )
        )

    def ResolvePerson(
        self, request: auth_pb2.ResolvePersonRequest, context: grpc.ServicerContext
    ) -> auth_pb2.ResolvePersonResponse:
        person_id = self._internal.resolve_person(
            self._convert.document(request.document, "document")
        )
        return auth_pb2.ResolvePersonResponse(
            registered=person_id is not None, person_id=person_id or ""
        )

    def RequireRealNameLevel(
        self, request: auth_pb2.RequireRealNameLevelRequest, context: grpc.ServicerContext
    ) -> auth_pb2.RequireRealNameLevelResponse:
        level = self._internal.require_real_name_level(request.person_id, request.min_level)
        return auth_pb2.RequireRealNameLevelResponse(real_name_level=level)
