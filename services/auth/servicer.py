"""gRPC servicers of etax.auth.v1 (AuthService, AccountService, InternalAuthService):
protobuf in, domain values to the use cases, protobuf out. Nothing else lives here."""

from __future__ import annotations

from datetime import datetime

import grpc
from etax.auth.v1 import auth_pb2, auth_pb2_grpc
from etax.common.v1 import types_pb2
from google.protobuf import duration_pb2, timestamp_pb2

from etax_platform.clock import Clock, optional_instant, to_timestamp
from etax_platform.documents import Document, parse_document
from etax_platform.enterprise_codes import normalize_enterprise_code
from etax_platform.errors import invalid
from etax_platform.identifiers import normalize_phone, require_province
from etax_platform.pii import mask_document, mask_email, mask_name, mask_phone
from etax_platform.policy import caller, optional_caller, presented_token, province_for
from services.auth.account import AccountCenter
from services.auth.dependencies import FaceChallenge
from services.auth.domain import (
    PhoneRecord,
    normalize_name,
    require_tax_authority,
)
from services.auth.internal import InternalAccounts
from services.auth.keys import SigningKeys
from services.auth.legacy import LegacyLogins
from services.auth.login import (
    Logins,
    SecondSteps,
    Switching,
    parse_target,
    target_of_identity,
)
from services.auth.qr_login import QrLogins
from services.auth.recovery import Recovery
from services.auth.registration import Completion, Registrations
from services.auth.sessions import IssuedSession, Sessions
from services.auth.steps import EMAIL_STEP, SCAN_STEP, SMS_STEP

_SECOND_STEPS = {
    SMS_STEP: auth_pb2.SECOND_STEP_SMS_CODE,
    SCAN_STEP: auth_pb2.SECOND_STEP_SCAN_VERIFICATION,
    EMAIL_STEP: auth_pb2.SECOND_STEP_EMAIL_CODE,
}


def _steps(second: SecondSteps) -> list[auth_pb2.SecondStep]:
    return [_SECOND_STEPS[step] for step in second.steps]


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


def _session(issued: IssuedSession) -> auth_pb2.Session:
    return auth_pb2.Session(
        session_id=issued.session_id,
        access_token=issued.access_token,
        access_token_expires_at=to_timestamp(issued.access_expires_at),
        refresh_token=issued.refresh_token,
        refresh_token_expires_at=to_timestamp(issued.refresh_expires_at),
        identity=issued.identity,
        person_id=issued.person_id,
        masked_name=issued.masked_name,
        real_name_level=issued.real_name_level,
        province=issued.province,
    )


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        *,
        logins: Logins,
        legacy: LegacyLogins,
        qr: QrLogins,
        sessions: Sessions,
        switching: Switching,
        recovery: Recovery,
        keys: SigningKeys,
    ) -> None:
        self._logins = logins
        self._legacy = legacy
        self._qr = qr
        self._sessions = sessions
        self._switching = switching
        self._recovery = recovery
        self._keys = keys

    # --- login (D1-D6) ---------------------------------------------------------------------

    def StartLogin(
        self, request: auth_pb2.StartLoginRequest, context: grpc.ServicerContext
    ) -> auth_pb2.StartLoginResponse:
        target = parse_target(
            request.entry,
            request.enterprise_code,
            request.agency_code,
            request.subject_type,
            request.subject_number,
            subject_pending=True,
        )
        started = self._logins.start(
            request.account,
            request.password,
            target,
            province_for(request.province, required=True),
        )
        return auth_pb2.StartLoginResponse(
            challenge_id=started.challenge_id,
            second_steps=_steps(started.second),
            masked_phone=started.second.masked_phone,
            phone_empty=started.second.phone_empty,
            masked_email=started.second.masked_email,
            expires_at=to_timestamp(started.expires_at),
            subject_required=started.subject_required,
        )

    def SearchLoginSubjects(
        self, request: auth_pb2.SearchLoginSubjectsRequest, context: grpc.ServicerContext
    ) -> auth_pb2.SearchLoginSubjectsResponse:
        subjects = self._logins.search_subjects(request.challenge_id, request.query)
        return auth_pb2.SearchLoginSubjectsResponse(subjects=subjects)

    def SelectLoginSubject(
        self, request: auth_pb2.SelectLoginSubjectRequest, context: grpc.ServicerContext
    ) -> auth_pb2.SelectLoginSubjectResponse:
        second = self._logins.select_subject(request.challenge_id, request.subject_number)
        return auth_pb2.SelectLoginSubjectResponse(
            second_steps=_steps(second),
            masked_phone=second.masked_phone,
            phone_empty=second.phone_empty,
            masked_email=second.masked_email,
        )

    def SendLoginCode(
        self, request: auth_pb2.SendLoginCodeRequest, context: grpc.ServicerContext
    ) -> auth_pb2.SendLoginCodeResponse:
        sent = self._logins.send_code(request.challenge_id)
        return auth_pb2.SendLoginCodeResponse(
            masked_phone=sent.masked_phone,
            code_expires_at=_timestamp(sent.code_expires_at),
            masked_email=sent.masked_email,
        )

    def CompleteLoginWithCode(
        self, request: auth_pb2.CompleteLoginWithCodeRequest, context: grpc.ServicerContext
    ) -> auth_pb2.CompleteLoginWithCodeResponse:
        issued = self._logins.complete_with_code(request.challenge_id, request.code)
        return auth_pb2.CompleteLoginWithCodeResponse(session=_session(issued))

    def StartLoginFace(
        self, request: auth_pb2.StartLoginFaceRequest, context: grpc.ServicerContext
    ) -> auth_pb2.StartLoginFaceResponse:
        return auth_pb2.StartLoginFaceResponse(
            face=_face(self._logins.start_face(request.challenge_id))
        )

    def CompleteLoginWithFace(
        self, request: auth_pb2.CompleteLoginWithFaceRequest, context: grpc.ServicerContext
    ) -> auth_pb2.CompleteLoginWithFaceResponse:
        issued = self._logins.complete_with_face(request.challenge_id, request.proof)
        return auth_pb2.CompleteLoginWithFaceResponse(session=_session(issued))

    def StartSubjectFaceLogin(
        self, request: auth_pb2.StartSubjectFaceLoginRequest, context: grpc.ServicerContext
    ) -> auth_pb2.StartSubjectFaceLoginResponse:
        challenge_id, face = self._logins.start_subject_face(
            request.subject_type,
            request.subject_number,
            province_for(request.province, required=True),
        )
        return auth_pb2.StartSubjectFaceLoginResponse(challenge_id=challenge_id, face=_face(face))

    # --- QR login (D3) ---------------------------------------------------------------------

    def CreateQrLogin(
        self, request: auth_pb2.CreateQrLoginRequest, context: grpc.ServicerContext
    ) -> auth_pb2.CreateQrLoginResponse:
        created = self._qr.create(province_for(request.province, required=True))
        return auth_pb2.CreateQrLoginResponse(
            qr_login_id=created.qr_login_id,
            qr_payload=created.qr_payload,
            expires_at=to_timestamp(created.expires_at),
        )

    def ConfirmQrLogin(
        self, request: auth_pb2.ConfirmQrLoginRequest, context: grpc.ServicerContext
    ) -> auth_pb2.ConfirmQrLoginResponse:
        self._qr.confirm(presented_token(), request.qr_payload)
        return auth_pb2.ConfirmQrLoginResponse()

    def GetQrLogin(
        self, request: auth_pb2.GetQrLoginRequest, context: grpc.ServicerContext
    ) -> auth_pb2.GetQrLoginResponse:
        view = self._qr.get(request.qr_login_id)
        return auth_pb2.GetQrLoginResponse(
            state=int(view.state),  # type: ignore[arg-type]
            session=None if view.session is None else _session(view.session),
        )

    # --- the old login (D7) ----------------------------------------------------------------

    def LegacyLogin(
        self, request: auth_pb2.LegacyLoginRequest, context: grpc.ServicerContext
    ) -> auth_pb2.LegacyLoginResponse:
        province = province_for(request.province, required=True)
        code = normalize_enterprise_code(request.enterprise_code)
        issued = self._legacy.login(code, request.password, province)
        return auth_pb2.LegacyLoginResponse(session=_session(issued))

    # --- sessions (A3, F3) -----------------------------------------------------------------

    def RefreshSession(
        self, request: auth_pb2.RefreshSessionRequest, context: grpc.ServicerContext
    ) -> auth_pb2.RefreshSessionResponse:
        issued = self._sessions.refresh(request.refresh_token)
        return auth_pb2.RefreshSessionResponse(session=_session(issued))

    def Logout(
        self, request: auth_pb2.LogoutRequest, context: grpc.ServicerContext
    ) -> auth_pb2.LogoutResponse:
        self._sessions.logout(optional_caller(), request.refresh_token)
        return auth_pb2.LogoutResponse()

    def SwitchIdentity(
        self, request: auth_pb2.SwitchIdentityRequest, context: grpc.ServicerContext
    ) -> auth_pb2.SwitchIdentityResponse:
        if not request.HasField("identity"):
            raise invalid("identity", message="请选择要切换的身份")
        issued = self._switching.switch(caller(), target_of_identity(request.identity))
        return auth_pb2.SwitchIdentityResponse(session=_session(issued))

    def GetPublicKeys(
        self, request: auth_pb2.GetPublicKeysRequest, context: grpc.ServicerContext
    ) -> auth_pb2.GetPublicKeysResponse:
        return auth_pb2.GetPublicKeysResponse(
            keys=[auth_pb2.JsonWebKey(**jwk) for jwk in self._keys.public_jwks()]
        )

    # --- recovery (C5, E1) -----------------------------------------------------------------

    def StartPasswordReset(
        self, request: auth_pb2.StartPasswordResetRequest, context: grpc.ServicerContext
    ) -> auth_pb2.StartPasswordResetResponse:
        started = self._recovery.start_reset(
            request.account, province_for(request.province, required=False)
        )
        return auth_pb2.StartPasswordResetResponse(
            reset_id=started.reset_id,
            masked_phone=started.masked_phone,
            phone_empty=started.phone_empty,
            expires_at=to_timestamp(started.expires_at),
            masked_email=started.masked_email,
        )

    def SendPasswordResetCode(
        self, request: auth_pb2.SendPasswordResetCodeRequest, context: grpc.ServicerContext
    ) -> auth_pb2.SendPasswordResetCodeResponse:
        sent = self._recovery.send_reset_code(request.reset_id)
        return auth_pb2.SendPasswordResetCodeResponse(
            masked_phone=sent.masked_phone,
            code_expires_at=_timestamp(sent.code_expires_at),
            masked_email=sent.masked_email,
        )

    def StartPasswordResetFace(
        self, request: auth_pb2.StartPasswordResetFaceRequest, context: grpc.ServicerContext
    ) -> auth_pb2.StartPasswordResetFaceResponse:
        return auth_pb2.StartPasswordResetFaceResponse(
            face=_face(self._recovery.start_reset_face(request.reset_id))
        )

    def CompletePasswordReset(
        self, request: auth_pb2.CompletePasswordResetRequest, context: grpc.ServicerContext
    ) -> auth_pb2.CompletePasswordResetResponse:
        kind = request.WhichOneof("proof")
        proof = request.code if kind == "code" else request.face_proof
        self._recovery.complete_reset(request.reset_id, kind, proof, request.new_password)
        return auth_pb2.CompletePasswordResetResponse()

    def StartPhoneRecovery(
        self, request: auth_pb2.StartPhoneRecoveryRequest, context: grpc.ServicerContext
    ) -> auth_pb2.StartPhoneRecoveryResponse:
        flow = self._recovery.start_phone_recovery(
            request.account, request.password, province_for("", required=False)
        )
        return auth_pb2.StartPhoneRecoveryResponse(
            recovery_id=flow.flow_id, expires_at=to_timestamp(flow.expires_at)
        )

    def CompletePhoneRecovery(
        self, request: auth_pb2.CompletePhoneRecoveryRequest, context: grpc.ServicerContext
    ) -> auth_pb2.CompletePhoneRecoveryResponse:
        masked = self._recovery.complete_phone_recovery(
            request.recovery_id, request.phone, request.verification_id, request.code
        )
        return auth_pb2.CompletePhoneRecoveryResponse(masked_phone=masked)

    def StartFaceUnlock(
        self, request: auth_pb2.StartFaceUnlockRequest, context: grpc.ServicerContext
    ) -> auth_pb2.StartFaceUnlockResponse:
        unlock_id, face = self._recovery.start_face_unlock(
            request.account, province_for("", required=False)
        )
        return auth_pb2.StartFaceUnlockResponse(unlock_id=unlock_id, face=_face(face))

    def CompleteFaceUnlock(
        self, request: auth_pb2.CompleteFaceUnlockRequest, context: grpc.ServicerContext
    ) -> auth_pb2.CompleteFaceUnlockResponse:
        self._recovery.complete_face_unlock(request.unlock_id, request.proof)
        return auth_pb2.CompleteFaceUnlockResponse()


class AccountServicer(auth_pb2_grpc.AccountServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        registrations: Registrations,
        account: AccountCenter,
        clock: Clock,
    ) -> None:
        self._registrations = registrations
        self._account = account
        self._convert = _Convert(clock)

    @staticmethod
    def _person_id(context: grpc.ServicerContext) -> str:
        return caller().person_id

    def StartRegistration(
        self, request: auth_pb2.StartRegistrationRequest, context: grpc.ServicerContext
    ) -> auth_pb2.StartRegistrationResponse:
        document, name = self._convert.identity(request.identity)
        started = self._registrations.start(
            document,
            name,
            overseas=request.overseas,
            province=province_for(request.province, required=True),
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
    def __init__(
        self,
        internal: InternalAccounts,
        legacy: LegacyLogins,
        keys: SigningKeys,
        sessions: Sessions,
        clock: Clock,
    ) -> None:
        self._internal = internal
        self._legacy = legacy
        self._keys = keys
        self._sessions = sessions
        self._convert = _Convert(clock)

    def ListRevokedSessions(
        self, request: auth_pb2.ListRevokedSessionsRequest, context: grpc.ServicerContext
    ) -> auth_pb2.ListRevokedSessionsResponse:
        found = self._sessions.revoked_since(optional_instant(request, "since"))
        retain_for = duration_pb2.Duration()
        retain_for.FromTimedelta(found.retain_for)
        return auth_pb2.ListRevokedSessionsResponse(
            session_ids=found.session_ids, as_of=to_timestamp(found.as_of), retain_for=retain_for
        )

    def ImportLegacyCredential(
        self, request: auth_pb2.ImportLegacyCredentialRequest, context: grpc.ServicerContext
    ) -> auth_pb2.ImportLegacyCredentialResponse:
        code = normalize_enterprise_code(request.enterprise_code)
        document = self._convert.document(request.person, "person")
        self._legacy.import_credential(code, request.legacy_password_hash, document)
        return auth_pb2.ImportLegacyCredentialResponse()

    def RotateSigningKey(
        self, request: auth_pb2.RotateSigningKeyRequest, context: grpc.ServicerContext
    ) -> auth_pb2.RotateSigningKeyResponse:
        key = self._keys.rotate()
        return auth_pb2.RotateSigningKeyResponse(
            kid=key.key.kid, signs_from=to_timestamp(key.signs_from)
        )

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
