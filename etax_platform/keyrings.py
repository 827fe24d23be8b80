"""HMAC-SHA256 keyrings: one secret per purpose, rotated on its own.

A keyring holds keys by id and names the active one: what is made now (a MAC, a blind
index) uses the active key and says which (the key id travels with a signed value, or is
stored beside an index); older keys still verify, or are still looked up, until they are
dropped. Rotation: add a key, make it active, and drop the old one once nothing made
with it matters any more (a short-lived code expired; stored indexes moved, see
services/binding, "Blind-index keys").

Written as `"id1:<base64 key>,id2:<base64 key>"` in a setting, with the active id in
another; development generates one under the data directory
(`etax_platform.settings.development_keyring`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
MIN_KEY_BYTES = 32
MIN_MAC_CHARS = 32


@dataclass(frozen=True)
class HmacKeyring:
    keys: Mapping[str, bytes]
    active_id: str

    def __post_init__(self) -> None:
        if self.active_id not in self.keys:
            raise ValueError(f"the active key id {self.active_id!r} has no key")
        for key_id, key in self.keys.items():
            if not _KEY_ID.match(key_id):
                raise ValueError(f"key id {key_id!r}: 1-16 letters, digits, '-' or '_'")
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"key {key_id!r} must have at least {MIN_KEY_BYTES} bytes")

    @staticmethod
    def generate(key_id: str) -> HmacKeyring:
        return HmacKeyring({key_id: os.urandom(MIN_KEY_BYTES)}, key_id)

    @staticmethod
    def parse(keys: str, active_id: str) -> HmacKeyring:
        """keys: "id1:<base64>,id2:<base64>"."""
        parsed = {}
        for item in keys.split(","):
            key_id, sep, encoded = item.strip().partition(":")
            if not sep:
                raise ValueError("keys are written id:<base64 key>, comma-separated")
            try:
                parsed[key_id] = base64.b64decode(encoded, validate=True)
            except ValueError:
                raise ValueError(f"key {key_id!r} is not base64") from None
        return HmacKeyring(parsed, active_id)

    def dump(self) -> dict[str, str]:
        return {
            "keys": ",".join(f"{k}:{base64.b64encode(v).decode()}" for k, v in self.keys.items()),
            "active_key_id": self.active_id,
        }

    def rotated(self, key_id: str) -> HmacKeyring:
        """This keyring with a new random key `key_id`, made active."""
        if key_id in self.keys:
            raise ValueError(f"key id {key_id!r} is taken")
        return HmacKeyring({**self.keys, key_id: os.urandom(MIN_KEY_BYTES)}, key_id)

    def without(self, key_id: str) -> HmacKeyring:
        """This keyring with an older key dropped."""
        return HmacKeyring({k: v for k, v in self.keys.items() if k != key_id}, self.active_id)

    def digest(self, key_id: str, purpose: str, message: str) -> str:
        """HMAC-SHA256 (hex) of the purpose and the message under one key (KeyError if
        the keyring has no such key)."""
        mac = hmac.new(self.keys[key_id], f"{purpose}\x00{message}".encode(), hashlib.sha256)
        return mac.hexdigest()

    def sign(self, purpose: str, message: str) -> tuple[str, str]:
        """(active key id, MAC): what a signed value carries."""
        return self.active_id, self.digest(self.active_id, purpose, message)

    def verify(self, key_id: str, purpose: str, message: str, mac: str) -> bool:
        """A MAC made by sign() under a key still held, possibly truncated to a prefix of
        at least MIN_MAC_CHARS hex digits (128 bits)."""
        if key_id not in self.keys or len(mac) < MIN_MAC_CHARS:
            return False
        expected = self.digest(key_id, purpose, message)[: len(mac)]
        return hmac.compare_digest(expected, mac)

    def digests(self, purpose: str, message: str) -> dict[str, str]:
        """The digest under every key, by key id, the active one first."""
        order = [self.active_id, *(k for k in self.keys if k != self.active_id)]
        return {key_id: self.digest(key_id, purpose, message) for key_id in order}
