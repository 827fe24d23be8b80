"""Personal information: masking, encryption at rest with key rotation, blind indexes."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag

from etax_platform.pii import (
    Keyring,
    PersonalData,
    mask_document,
    mask_email,
    mask_name,
    mask_phone,
    redact,
)


def test_masks_match_the_design() -> None:
    assert mask_phone("13812341234") == "138****1234"
    assert mask_document("37010219900101123X") == "3701**********123X"
    assert mask_email("alice@example.com") == "a***@example.com"
    assert mask_name("张三") == "张*"
    assert mask_name("张小三") == "张*三"


def test_redact_masks_numbers_in_free_text() -> None:
    text = "user 11010519491231002X phone +8613812341234 mail bob.lee@example.cn ok"
    redacted = redact(text)
    assert "11010519491231002X" not in redacted and "1101**********002X" in redacted
    assert "13812341234" not in redacted and "138****1234" in redacted
    assert "bob.lee@example.cn" not in redacted and "b***@example.cn" in redacted
    assert redact("order 123456 took 12.5ms") == "order 123456 took 12.5ms"


def test_encryption_round_trips_and_hides_the_value(personal_data: PersonalData) -> None:
    sealed = personal_data.encrypt("11010519491231002X", "person.document")
    assert "11010519491231002X" not in sealed
    assert sealed != personal_data.encrypt("11010519491231002X", "person.document")
    assert personal_data.decrypt(sealed, "person.document") == "11010519491231002X"


def test_ciphertext_is_bound_to_its_context(personal_data: PersonalData) -> None:
    sealed = personal_data.encrypt("13812341234", "person.phone")
    with pytest.raises(InvalidTag):
        personal_data.decrypt(sealed, "person.document")


def test_rotation_reads_old_keys_and_writes_the_new_one(keyring: Keyring) -> None:
    old = PersonalData(keyring)
    sealed = old.encrypt("13812341234", "phone")
    rotated_ring = Keyring(
        {**keyring.keys, "k2": Keyring.generate().keys["k1"]}, "k2", keyring.index_key
    )
    rotated = PersonalData(rotated_ring)
    assert rotated.decrypt(sealed, "phone") == "13812341234"
    assert rotated.needs_rotation(sealed)
    assert not rotated.needs_rotation(rotated.encrypt("13812341234", "phone"))
    assert rotated.blind_index("13812341234", "phone") == old.blind_index("13812341234", "phone")


def test_blind_index_is_deterministic_keyed_and_separated_by_kind(
    personal_data: PersonalData,
) -> None:
    index = personal_data.blind_index("13812341234", "phone")
    assert index == personal_data.blind_index("13812341234", "phone")
    assert index != personal_data.blind_index("13812341234", "username")
    assert index != PersonalData(Keyring.generate()).blind_index("13812341234", "phone")
    assert "13812341234" not in index


def test_keyring_refuses_weak_keys() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Keyring({"k1": b"short"}, "k1", b"x" * 32)
    with pytest.raises(ValueError, match="active"):
        Keyring({"k1": b"k" * 32}, "k9", b"x" * 32)
