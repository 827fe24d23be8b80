"""The protobuf wire format written by hand, so a request can be wrong in ways the
generated classes never produce (a varint where a string is, unknown fields, out-of-range
numbers, invalid UTF-8, truncation)."""

from __future__ import annotations

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
_MASK64 = (1 << 64) - 1


def varint(value: int) -> bytes:
    """Base-128 varint of the value taken modulo 2**64 (negatives as ten bytes, as
    protobuf encodes int32 -1)."""
    value &= _MASK64
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def zigzag(value: int) -> int:
    return ((value << 1) ^ (value >> 63)) & _MASK64


def key(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def field_varint(number: int, value: int) -> bytes:
    return key(number, VARINT) + varint(value)


def field_len(number: int, payload: bytes) -> bytes:
    return key(number, LEN) + varint(len(payload)) + payload


def field_i32(number: int, payload: bytes) -> bytes:
    return key(number, I32) + payload[:4].ljust(4, b"\0")


def field_i64(number: int, payload: bytes) -> bytes:
    return key(number, I64) + payload[:8].ljust(8, b"\0")


def field_group(number: int, payload: bytes) -> bytes:
    """A (deprecated) group: well-formed, so a parser keeps it as an unknown field."""
    return key(number, SGROUP) + payload + key(number, EGROUP)
