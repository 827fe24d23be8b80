"""Personal information (PIPL): masking, encryption at rest and blind indexes.

Document numbers, phones and emails are stored encrypted with AES-256-GCM under a key id
(so keys can rotate: old ids stay readable, new writes use the active id) and looked up
by an HMAC-SHA256 blind index. Logs and error texts only ever show them masked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12


def mask_phone(phone: str) -> str:
    """13812341234 -> 138****1234."""
    if len(phone) < 7:
        return "*" * len(phone)
    return f"{phone[:3]}{'*' * (len(phone) - 7)}{phone[-4:]}"


def mask_document(number: str) -> str:
    """370102199001011234 -> 3701**********1234; short numbers keep less."""
    if len(number) <= 4:
        return "*" * len(number)
    keep_head = 4 if len(number) >= 12 else 1
    keep_tail = 4 if len(number) >= 12 else 2
    return f"{number[:keep_head]}{'*' * (len(number) - keep_head - keep_tail)}{number[-keep_tail:]}"


def mask_email(email: str) -> str:
    """alice@example.com -> a***@example.com."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def mask_name(name: str) -> str:
    """张三 -> 张*, 张小三 -> 张*三, John Smith -> J********h."""
    if len(name) <= 1:
        return "*"
    if len(name) == 2:
        return f"{name[0]}*"
    return f"{name[0]}{'*' * (len(name) - 2)}{name[-1]}"


# Defence in depth for logs: whatever slips into a message is masked before it is written.
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])(\d{6})(\d{8})(\d{3}[0-9Xx])(?![0-9A-Za-z])")
_PHONE = re.compile(r"(?<!\d)(?:\+?86)?(1[3-9]\d)(\d{4})(\d{4})(?!\d)")
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")


def redact(text: str) -> str:
    """Masks resident ID numbers, mainland phones and emails anywhere in free text."""
    text = _ID_NUMBER.sub(lambda m: f"{m[1][:4]}**********{m[3][-4:]}", text)
    text = _PHONE.sub(lambda m: f"{m[1]}****{m[3]}", text)
    return _EMAIL.sub(lambda m: f"{m[1]}***@{m[2]}", text)


@dataclass(frozen=True)
class Keyring:
    """AES-256-GCM keys by id, the id new writes use, and the blind-index key (None for a
    service that only seals: it must not hold another service's index key)."""

    keys: Mapping[str, bytes]
    active_key_id: str
    index_key: bytes | None

    def __post_init__(self) -> None:
        if self.active_key_id not in self.keys:
            raise ValueError(f"active PII key id {self.active_key_id!r} has no key")
        for key_id, key in self.keys.items():
            if len(key) != 32 or ":" in key_id or "." in key_id:
                raise ValueError(f"PII key {key_id!r} must be 32 bytes with a plain id")
        if self.index_key is not None and len(self.index_key) < 32:
            raise ValueError("the blind-index key must have at least 32 bytes")

    @staticmethod
    def generate() -> Keyring:
        return Keyring({"k1": AESGCM.generate_key(256)}, "k1", os.urandom(32))

    @staticmethod
    def parse(keys: str, active_key_id: str, index_key: str | None) -> Keyring:
        """keys: "k1:<base64>,k2:<base64>"; index_key: base64."""
        parsed = {}
        for item in keys.split(","):
            key_id, _, encoded = item.strip().partition(":")
            parsed[key_id] = base64.b64decode(encoded)
        index = None if index_key is None else base64.b64decode(index_key)
        return Keyring(parsed, active_key_id, index)

    def dump(self) -> dict[str, str]:
        dumped = {
            "keys": ",".join(f"{k}:{base64.b64encode(v).decode()}" for k, v in self.keys.items()),
            "active_key_id": self.active_key_id,
        }
        if self.index_key is not None:
            dumped["index_key"] = base64.b64encode(self.index_key).decode()
        return dumped

    def sealing_only(self) -> Keyring:
        """The same encryption keys without the blind-index key."""
        return Keyring(self.keys, self.active_key_id, None)


class PersonalData:
    """Encrypts, decrypts and indexes personal numbers with a keyring.

    `context` binds a ciphertext to its use (a column name, say) as associated data, so
    a value copied into another column does not decrypt there.
    """

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keyring.keys.items()}

    def encrypt(self, plaintext: str, context: str) -> str:
        key_id = self._keyring.active_key_id
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, plaintext.encode(), context.encode())
        return f"{key_id}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, context: str) -> str:
        key_id, _, body = token.partition(".")
        raw = base64.urlsafe_b64decode(body)
        return (
            self._ciphers[key_id]
            .decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode())
            .decode()
        )

    def needs_rotation(self, token: str) -> bool:
        return not token.startswith(self._keyring.active_key_id + ".")

    def blind_index(self, value: str, kind: str) -> str:
        """Deterministic lookup key: HMAC-SHA256 over kind and the normalised value."""
        if self._keyring.index_key is None:
            raise RuntimeError("this keyring has no blind-index key")
        mac = hmac.new(self._keyring.index_key, f"{kind}\x00{value}".encode(), hashlib.sha256)
        return mac.hexdigest()
