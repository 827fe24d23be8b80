"""Malformed and hostile requests, generated from the message descriptors.

`case(seed, index, pool, category)` makes the same request for the same arguments,
whatever ran before it or beside it, so a failure is replayed from its seed, index and
category alone (a mixed run draws each index's category by weight: `category_of`). A
category names one kind of hostility; its case picks an RPC or JSON route, a target
(directly to the service; through the gateway as gRPC or gRPC-Web on the public listener,
gRPC on the internal one; JSON on the public one) and a token (none, a valid session, an
enterprise session, a forged one). Protobuf bodies are written at the wire level (`wire`),
so they can be wrong in ways the generated classes never are.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from tests.fuzz import schema, wire
from tests.fuzz.schema import Route, Rpc

F = FieldDescriptor

# The bodies the gRPC limit (4 MiB) and the gateway's buffer (8 MiB) refuse.
GRPC_LIMIT = 4 * 1024 * 1024
GATEWAY_BUFFER = 8 * 1024 * 1024


@dataclass
class Pool:
    """Values that get a request past the first checks: what the set-up registered and
    started (the person, their enterprise, live challenge and ticket ids, tokens)."""

    by_field: dict[str, list[str]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # "session", "enterprise"

    def add(self, name: str, *values: str) -> None:
        self.by_field.setdefault(name, []).extend(v for v in values if v)


@dataclass(frozen=True)
class Case:
    seed: int
    index: int
    category: str
    target: str  # direct | public | grpc-web | internal (gRPC), http (JSON through the gateway)
    name: str  # the RPC or the route
    token: str  # none | session | enterprise | forged:<index in FORGED_TOKENS>
    note: str  # what is hostile about it, for the report
    rpc: Rpc | None = None
    body: bytes = b""
    verb: str = ""
    url: str = ""  # path and query, percent-encoded
    headers: tuple[tuple[str, str], ...] = ()

    def describe(self, limit: int = 600) -> str:
        body = self.body[:limit]
        more = f"... ({len(self.body)} bytes)" if len(self.body) > limit else ""
        url = self.url if len(self.url) <= limit else f"{self.url[:limit]}... ({len(self.url)})"
        request = f"{self.verb} {url} {dict(self.headers)}" if self.target == "http" else ""
        return (
            f"seed={self.seed} case={self.index} category={self.category} target={self.target} "
            f"{self.name} token={self.token}: {self.note}\n  {request}body={body!r}{more}"
        )


# --- values ---------------------------------------------------------------------------

PLAUSIBLE: dict[str, list[str]] = {
    "province": ["37", "11", "32", "99", "3", "370"],
    "phone": ["13812345678", "+8613812345678", "1381234567", "23812345678"],
    "recipient": ["13812345678", "a@example.com"],
    "email": ["a@example.com", "a@", "@example.com", "a@b"],
    "account": ["13812345678", "nobody", "370102199003071238"],
    "password": ["Passw0rd.1", "short", "Etax.2023pw", "a" * 17],
    "new_password": ["Passw0rd.2", "12345678", "Etax.2024pw"],
    "old_password": ["Passw0rd.1", "Etax.2023pw"],
    "code": ["123456", "000000", "12345", "abcdef"],
    "enterprise_code": ["91370102MA3C4D5E6M", "12345", "370102123456789", "91110000600037341N"],
    "number": ["370102199003071238", "11010519491231002X", "P1234567", "H12345678"],
    "name": ["张三", "Jane Doe", "买买提·艾力", "A"],
    "subject_number": ["BJXM-2026-001", "91370102MA3C4D5E6M", "X"],
    "project_number": ["BJXM-2026-001", "QD-1"],
    "query": ["BJ", "913701", "%", "_", "*"],
    "username": ["zhangsan", "user_1", "1234567", "ab"],
    "legacy_password_hash": [
        "$pbkdf2-sha256$29000$c2FsdHNhbHQ$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo",
        "$pbkdf2-sha256$1$$",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        "plain",
    ],
    "code_tax_authority": ["13701020000", "1"],
}
PLAUSIBLE["agency_code"] = PLAUSIBLE["client_code"] = PLAUSIBLE["enterprise_code"]
_ID_FIELDS = ("_id", "token", "proof", "qr_payload", "subject_ref")

ODD_UNICODE = [
    "\u202eRTL\u202c",  # right-to-left override
    "مرحبا بالعالم",  # Arabic
    "שלום",  # Hebrew
    "e\u0301" * 40,  # combining marks
    "Z\u0351\u0363\u0364\u0310\u0300" * 30,  # stacked combining marks
    "𠀀𠀁𝕏😀🇨🇳",  # astral planes, a flag
    "\u200b\u200c\u200d\ufeff",  # zero-width characters, BOM
    "３７０１０２１９９００３０７１２３８",  # full-width digits
    "٣٧٠١٠٢١٩٩٠٠٣٠٧١٢٣٨",  # Arabic-Indic digits (str.isdigit says yes)
    "\u2028\u2029",  # line and paragraph separators
    "\uffff\ufffe\U0010ffff",  # noncharacters
    "ℌ𝔢𝔩𝔩𝔬 ﬁ ﬀ Ⅻ",  # compatibility forms
    "'; DROP TABLE persons; --",
    "%s%n%x{0}${jndi:x}",
    "../../etc/passwd",
]
CONTROL = ["\x00", "a\x00b", "\x01\x02\x1b[31m", "\r\n", "\t", "\x7f", "\x08", "\x00" * 64]


def _overlong(rng: random.Random) -> str:
    size = rng.choice([257, 1025, 10_000, 100_000, 1_000_000])
    return rng.choice(["A", "张", "𠀀", "e\u0301", "9"]) * size


def hostile_string(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.25:
        return _overlong(rng)
    if kind < 0.55:
        return rng.choice(ODD_UNICODE)
    if kind < 0.8:
        return rng.choice(CONTROL)
    base = rng.choice(["370102199003071238", "13812345678", "91370102MA3C4D5E6M", "37"])
    return base + rng.choice(CONTROL + ODD_UNICODE)


# Bytes a proto3 string may not hold (the server's own parsing refuses them, issue 11.4).
INVALID_UTF8 = [
    b"\xc3\x28",  # bad continuation
    b"\xed\xa0\x80",  # a lone surrogate (U+D800) as CESU-8
    b"\xed\xbf\xbf",  # U+DFFF
    b"\xff\xfe",
    b"\xe4\xb8",  # truncated 张
    b"\xc0\xaf",  # overlong /
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\x80",
]


def _random_text(rng: random.Random, size: int = 12) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(size))


# What a dotted value's number or signature segment may be instead (QR payloads, face
# proofs: prefix.id.expiry.signature): digits int() refuses, too many digits, signs, spaces.
ODD_SEGMENTS = [
    "²³",  # superscripts: str.isdigit() says yes, int() refuses
    "①②",
    "١٢٣",  # Arabic-Indic digits: both say yes
    "-1",
    "+1",
    " 1",
    "1_000",
    "0x10",
    "",
    "9" * 5000,  # past int()'s 4,300-digit limit
    "9" * 19,
    "1e9",
]


def mutated_segment(value: str, rng: random.Random) -> str:
    """A harvested dotted value with one segment replaced, dropped or doubled."""
    parts = value.split(".")
    # Numbers inside such values are parsed (expiry times): they are changed most often.
    numbers = [i for i, part in enumerate(parts) if part.isascii() and part.isdigit()]
    index = rng.choice(numbers) if numbers and rng.random() < 0.6 else rng.randrange(len(parts))
    choice = rng.random()
    if choice < 0.7:
        parts[index] = rng.choice(ODD_SEGMENTS)
    elif choice < 0.85:
        del parts[index]
    else:
        parts.insert(index, parts[index])
    return ".".join(parts)


def mutated(value: str, rng: random.Random) -> str:
    """A well-formed value with one small change: a segment, a character, its case, its
    digits in another script, whitespace around it."""
    if "." in value and rng.random() < 0.6:
        return mutated_segment(value, rng)
    if not value:
        return rng.choice(ODD_SEGMENTS)
    at = rng.randrange(len(value))
    choice = rng.randrange(7)
    if choice == 0:
        return value[:at] + chr(ord(value[at]) ^ 1) + value[at + 1 :]
    if choice == 1:
        return value[:at] + rng.choice(["²", "①", "\x00", "\u200b", "é", "张", " "]) + value[at:]
    if choice == 2:
        return value[:at]
    if choice == 3:
        return value.swapcase()
    if choice == 4:
        return value.translate(
            str.maketrans("0123456789", rng.choice(["０１２３４５６７８９", "⁰¹²³⁴⁵⁶⁷⁸⁹"]))
        )
    if choice == 5:
        return rng.choice([" ", "\t", "\n", "\u3000"]) + value + rng.choice(["", " ", "\n"])
    return value * rng.choice([2, 50])


def plausible_string(f: FieldDescriptor, rng: random.Random, pool: Pool) -> str:
    """What a field of that name usually holds: harvested values first, then guesses."""
    name = f.name
    harvested = pool.by_field.get(name)
    if harvested and rng.random() < 0.7:
        value = rng.choice(harvested)
        return mutated_segment(value, rng) if "." in value and rng.random() < 0.3 else value
    if name == "code" and f.containing_type.name == "TaxAuthority":
        return rng.choice(PLAUSIBLE["code_tax_authority"])
    if name in PLAUSIBLE:
        return rng.choice(PLAUSIBLE[name])
    if name.endswith(_ID_FIELDS):
        return rng.choice(
            [_random_text(rng, 24), "", "x", rng.choice(pool.by_field.get("any_id", ["x"]))]
        )
    return _random_text(rng, rng.randint(0, 16))


# --- protobuf bodies ------------------------------------------------------------------

_VARINT_TYPES = {
    F.TYPE_INT32,
    F.TYPE_INT64,
    F.TYPE_UINT32,
    F.TYPE_UINT64,
    F.TYPE_SINT32,
    F.TYPE_SINT64,
    F.TYPE_BOOL,
    F.TYPE_ENUM,
}
_I32_TYPES = {F.TYPE_FIXED32, F.TYPE_SFIXED32, F.TYPE_FLOAT}
_I64_TYPES = {F.TYPE_FIXED64, F.TYPE_SFIXED64, F.TYPE_DOUBLE}
EXTREME_INTS = [
    -1,
    0,
    1,
    2,
    2**31 - 1,
    -(2**31),
    2**31,
    2**32 - 1,
    2**32 + 5,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
]
# Timestamp/Duration seconds and nanos beyond what protobuf (or datetime) allows.
EXTREME_SECONDS = [
    253402300799,  # 9999-12-31T23:59:59Z
    253402300800,
    -62135596800,  # 0001-01-01T00:00:00Z
    -62135596801,
    2**63 - 1,
    -(2**63),
    -1,
    0,
    4102444800,  # 2100-01-01
]
EXTREME_NANOS = [-1, 1_000_000_000, 2**31 - 1, -(2**31), 999_999_999]


@dataclass
class Style:
    """How one message is made hostile."""

    include: float = 0.8  # chance a field is present
    # Chance a field gets the hostile value rather than a plausible one: the others stay
    # plausible, so the request gets past the first checks to where that field is used.
    hostility: float = 0.4
    string: Callable[[FieldDescriptor, random.Random, Pool], bytes] | None = None
    enum: Callable[[EnumDescriptor, random.Random], int] | None = None
    number: Callable[[random.Random], int] | None = None
    timestamp: Callable[[random.Random], bytes] | None = None
    wrong_type: float = 0.0  # chance a present field is sent with another wire type
    unknown: float = 0.0  # chance of extra unknown fields
    repeat: Callable[[random.Random, FieldDescriptor], int] | None = None


def _enum_value(enum: EnumDescriptor, rng: random.Random) -> int:
    numbers = [v.number for v in enum.values]
    return rng.choice([n for n in numbers if n] or numbers)


def _scalar(f: FieldDescriptor, rng: random.Random, style: Style) -> bytes:
    hostile = rng.random() < style.hostility
    if f.type == F.TYPE_ENUM:
        if style.enum is not None and hostile:
            return wire.varint(style.enum(f.enum_type, rng))
        return wire.varint(_enum_value(f.enum_type, rng))
    if style.number is not None and hostile:
        value = style.number(rng)
    elif f.type == F.TYPE_BOOL:
        value = rng.randint(0, 1)
    else:
        value = rng.choice([0, 1, 3, 4, 5, 100])
    if f.type in (F.TYPE_SINT32, F.TYPE_SINT64):
        return wire.varint(wire.zigzag(value))
    if f.type in _I32_TYPES:
        return (value & 0xFFFFFFFF).to_bytes(4, "little")
    if f.type in _I64_TYPES:
        return (value & (2**64 - 1)).to_bytes(8, "little")
    return wire.varint(value)


def _timestamp(rng: random.Random, style: Style, pool: Pool) -> bytes:
    if style.timestamp is not None:
        return style.timestamp(rng)
    now = int(pool.by_field.get("now", ["1790000000"])[0])
    seconds = now + rng.choice([-86400 * 400, -60, 3600, 86400 * 30, 86400 * 3650])
    return wire.field_varint(1, seconds)


def _wrong(f: FieldDescriptor, payload: bytes, rng: random.Random) -> bytes:
    """The field sent with a wire type its type never has (kept as an unknown field).

    Never LEN for a repeated number (that is the packed encoding) nor for a message."""
    number = f.number
    if f.type in _VARINT_TYPES:
        return rng.choice([wire.field_i32, wire.field_i64])(number, payload)
    if f.type in _I32_TYPES or f.type in _I64_TYPES:
        return wire.field_varint(number, rng.choice(EXTREME_INTS))
    choice = rng.randrange(4)
    if choice == 0:
        return wire.field_varint(number, rng.choice(EXTREME_INTS))
    if choice == 1:
        return wire.field_i32(number, payload)
    if choice == 2:
        return wire.field_i64(number, payload)
    return wire.field_group(number, wire.field_varint(1, 7))


def _unknown_fields(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.randint(1, 4)):
        number = rng.choice([15, 99, 1000, 19999, 50000, 2**29 - 1])
        out += rng.choice(
            [
                lambda: wire.field_varint(number, rng.choice(EXTREME_INTS)),
                lambda: wire.field_len(number, rng.randbytes(rng.randint(0, 64))),
                lambda: wire.field_i32(number, rng.randbytes(4)),
                lambda: wire.field_i64(number, rng.randbytes(8)),
                lambda: wire.field_group(number, wire.field_varint(1, 1)),
            ]
        )()
    return out


def message(
    descriptor: Descriptor, rng: random.Random, pool: Pool, style: Style, depth: int = 0
) -> bytes:
    """One serialized message of the type, fields chosen and made hostile by the style."""
    if descriptor.full_name == "google.protobuf.Timestamp":
        return _timestamp(rng, style, pool)
    out = bytearray()
    for f in descriptor.fields:
        if rng.random() > style.include:
            continue
        count = 1
        if f.is_repeated:
            count = style.repeat(rng, f) if style.repeat else rng.randint(0, 3)
        for _ in range(count):
            out += _field(f, rng, pool, style, depth)
    if style.unknown and rng.random() < style.unknown:
        out += _unknown_fields(rng)
    return bytes(out)


def _field(f: FieldDescriptor, rng: random.Random, pool: Pool, style: Style, depth: int) -> bytes:
    if f.type == F.TYPE_MESSAGE:
        payload = message(f.message_type, rng, pool, style, depth + 1) if depth < 6 else b""
        if style.wrong_type and rng.random() < style.wrong_type:
            return _wrong(f, payload, rng)
        return wire.field_len(f.number, payload)
    if f.type in (F.TYPE_STRING, F.TYPE_BYTES):
        if style.string is not None and rng.random() < style.hostility:
            payload = style.string(f, rng, pool)
        elif f.type == F.TYPE_BYTES:
            payload = rng.choice(
                [b"pass-capture", b"dark-capture", b"mismatch", b"", rng.randbytes(32)]
            )
        else:
            payload = plausible_string(f, rng, pool).encode()
        if style.wrong_type and rng.random() < style.wrong_type:
            return _wrong(f, payload, rng)
        return wire.field_len(f.number, payload)
    payload = _scalar(f, rng, style)
    if style.wrong_type and rng.random() < style.wrong_type:
        return _wrong(f, payload, rng)
    if f.type in _I32_TYPES:
        return wire.key(f.number, wire.I32) + payload
    if f.type in _I64_TYPES:
        return wire.key(f.number, wire.I64) + payload
    return wire.key(f.number, wire.VARINT) + payload


# --- JSON bodies (through the transcoder) ---------------------------------------------


def json_value(
    f: FieldDescriptor,
    rng: random.Random,
    pool: Pool,
    hostile: Callable[[random.Random], Any] | None,
    depth: int = 0,
) -> Any:
    def one() -> Any:
        if hostile is not None and rng.random() < 0.5:
            return hostile(rng)
        if f.type == F.TYPE_MESSAGE:
            if f.message_type.full_name == "google.protobuf.Timestamp":
                return rng.choice(["2027-01-01T00:00:00Z", "2026-12-01T08:00:00+08:00"])
            return json_message(f.message_type, rng, pool, hostile, depth + 1) if depth < 6 else {}
        if f.type == F.TYPE_ENUM:
            return rng.choice([v.name for v in f.enum_type.values])
        if f.type == F.TYPE_BOOL:
            return rng.random() < 0.5
        if f.type == F.TYPE_BYTES:
            return base64.b64encode(
                rng.choice([b"pass-capture", b"dark", rng.randbytes(16)])
            ).decode()
        if f.type == F.TYPE_STRING:
            return plausible_string(f, rng, pool)
        return rng.choice([0, 1, 3, 4])

    if f.is_repeated:
        return [one() for _ in range(rng.randint(0, 3))]
    return one()


def json_message(
    descriptor: Descriptor,
    rng: random.Random,
    pool: Pool,
    hostile: Callable[[random.Random], Any] | None,
    depth: int = 0,
    include: float = 0.8,
) -> dict[str, Any]:
    return {
        f.name: json_value(f, rng, pool, hostile, depth)
        for f in descriptor.fields
        if rng.random() < include
    }


def json_wrong_type(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            True,
            0,
            -1,
            1.5,
            1e308,
            -(2**70),
            "",
            "ENTRY_NOT_A_VALUE",
            "DOCUMENT_TYPE_NONSENSE",
            "1e400",
            "NaN",
            [],
            [1, "a", None],
            {},
            {"a": {"b": []}},
            [[[[[]]]]],
            "2027-13-45T25:61:61Z",
            "10000-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
        ]
    )


def json_extreme_number(rng: random.Random) -> Any:
    return rng.choice(
        [
            *EXTREME_INTS,
            str(2**63),
            str(-(2**64)),
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:59.999999999Z",
            "0001-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2026-01-01T00:00:00.1234567891Z",
            "2026-02-30T00:00:00Z",
        ]
    )


# --- cases ------------------------------------------------------------------------------

TOKENS = ("none", "session", "enterprise", "forged")
TOKEN_WEIGHTS = (35, 30, 25, 10)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _jwt(header: Any, claims: Any, signature: bytes = b"signature") -> str:
    parts = (json.dumps(header).encode(), json.dumps(claims).encode(), signature)
    return ".".join(_b64url(part) for part in parts)


_CLAIMS = {"sub": "p-1", "iss": "etax-auth", "aud": "etax", "exp": 4102444800, "sid": "s-1"}
# Access tokens no one issued: each must be UNAUTHENTICATED (HTTP 401), never INTERNAL,
# wherever it is verified (Envoy's jwt_authn, or the service itself on a direct call).
FORGED_TOKENS = (
    _jwt({"alg": "EdDSA", "kid": "forged"}, _CLAIMS),
    _jwt({"alg": "none"}, _CLAIMS, b""),
    _jwt({"alg": "HS256", "kid": "forged"}, _CLAIMS),
    _jwt({"alg": "RS256"}, _CLAIMS),
    _jwt({"alg": "EdDSA"}, _CLAIMS, b"\0" * 64),
    _jwt({"alg": "EdDSA", "kid": "x" * 4000}, _CLAIMS),
    _jwt({"alg": "EdDSA", "kid": 7, "crit": ["exp"]}, _CLAIMS),
    _jwt([], []),
    _jwt("header", 42),
    _jwt({"alg": "EdDSA"}, {**_CLAIMS, "exp": "never", "iat": -(2**70), "nbf": 1e308}),
    _jwt({"alg": "EdDSA"}, {**_CLAIMS, "sub": None, "aud": [], "province": {"a": 1}}),
    "a.b.c",
    "a.b",
    "....",
    "eyJ",
    "%%%.%%%.%%%",
    "Bearer",
    "x" * 16000,
    ".".join(["eyJhbGciOiJFZERTQSJ9"] * 40),
)


def _token(rng: random.Random) -> str:
    kind = rng.choices(TOKENS, TOKEN_WEIGHTS)[0]
    if kind == "forged":
        return f"forged:{rng.randrange(len(FORGED_TOKENS))}"
    return kind


def _grpc_target(rng: random.Random) -> str:
    """Directly to the service, or through the gateway: gRPC on the public listener,
    gRPC-Web there (the web page's protocol), gRPC over mTLS on the internal one."""
    return rng.choices(("direct", "public", "grpc-web", "internal"), (45, 15, 15, 25))[0]


def _grpc_case(
    seed: int, index: int, category: str, rng: random.Random, pool: Pool, style: Style, note: str
) -> Case:
    rpc = rng.choice(schema.rpcs())
    body = message(rpc.input, rng, pool, style)
    return Case(
        seed,
        index,
        category,
        _grpc_target(rng),
        str(rpc),
        _token(rng),
        note,
        rpc=rpc,
        body=body,
    )


def _repeat_many(rng: random.Random, f: FieldDescriptor) -> int:
    if f.type == F.TYPE_MESSAGE:
        return rng.choice([0, 50, 500, 3000])
    return rng.choice([0, 100, 5000, 50_000])


def _grpc_plausible(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    return _grpc_case(
        seed, index, "grpc-plausible", rng, pool, Style(include=0.9), "plausible values"
    )


def _grpc_missing(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    include = rng.choice([0.0, 0.2, 0.5])
    return _grpc_case(
        seed,
        index,
        "grpc-missing",
        rng,
        pool,
        Style(include=include),
        f"fields present with p={include}",
    )


def _grpc_wrong_type(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    style = Style(wrong_type=rng.choice([0.3, 1.0]), unknown=0.7)
    return _grpc_case(
        seed,
        index,
        "grpc-wrong-type",
        rng,
        pool,
        style,
        "fields with the wrong wire type, unknown fields",
    )


def _invalid_enum(enum: EnumDescriptor, rng: random.Random) -> int:
    known = {v.number for v in enum.values}
    return rng.choice([-1, -(2**31), 2**31 - 1, max(known) + 1, 999, 7, 100, 202, 300])


def _grpc_enum(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    return _grpc_case(
        seed, index, "grpc-enum", rng, pool, Style(enum=_invalid_enum), "invalid enum numbers"
    )


def _hostile_utf8(f: FieldDescriptor, rng: random.Random, pool: Pool) -> bytes:
    return hostile_string(rng).encode()


def _grpc_unicode(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    return _grpc_case(
        seed,
        index,
        "grpc-unicode",
        rng,
        pool,
        Style(string=_hostile_utf8),
        "odd, overlong, NUL and control characters",
    )


def _extreme_timestamp(rng: random.Random) -> bytes:
    seconds, nanos = rng.choice(EXTREME_SECONDS), rng.choice([0, *EXTREME_NANOS])
    return wire.field_varint(1, seconds) + wire.field_varint(2, nanos)


def _grpc_numbers(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    style = Style(
        number=lambda r: r.choice(EXTREME_INTS),
        enum=lambda e, r: r.choice([*(v.number for v in e.values), *EXTREME_INTS]),
        timestamp=_extreme_timestamp,
    )
    return _grpc_case(
        seed, index, "grpc-numbers", rng, pool, style, "out-of-range numbers and timestamps"
    )


def _mutated_harvest(f: FieldDescriptor, rng: random.Random, pool: Pool) -> bytes:
    harvested = pool.by_field.get(f.name)
    value = rng.choice(harvested) if harvested else plausible_string(f, rng, pool)
    return mutated(value, rng).encode()


def _uses_harvest(descriptor: Descriptor, pool: Pool, depth: int = 0) -> bool:
    return depth < 4 and any(
        f.name in pool.by_field
        or (f.message_type is not None and _uses_harvest(f.message_type, pool, depth + 1))
        for f in descriptor.fields
    )


def _grpc_mutated(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    """Live values from the set-up (ids, QR payloads, proofs, numbers), one changed a little,
    to the RPCs that take them: past the format checks, into the parsing behind them."""
    rpc = rng.choice([r for r in schema.rpcs() if _uses_harvest(r.input, pool)])
    body = message(rpc.input, rng, pool, Style(include=0.9, string=_mutated_harvest))
    note = "live values with one small change"
    return Case(
        seed,
        index,
        "grpc-mutated",
        _grpc_target(rng),
        str(rpc),
        _token(rng),
        note,
        rpc=rpc,
        body=body,
    )


def _grpc_repeated(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    return _grpc_case(
        seed,
        index,
        "grpc-repeated",
        rng,
        pool,
        Style(repeat=_repeat_many),
        "many repeated elements, nested messages",
    )


def _grpc_oversized(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    rpc = rng.choice(schema.rpcs())
    size = rng.choice([GRPC_LIMIT + 1, GRPC_LIMIT + 1024 * 1024, GATEWAY_BUFFER + 1])
    number = rng.choice([f.number for f in rpc.input.fields] or [1])
    body = wire.field_len(number, b"A" * size)
    return Case(
        seed,
        index,
        "grpc-oversized",
        _grpc_target(rng),
        str(rpc),
        _token(rng),
        f"{size} bytes in field {number}",
        rpc=rpc,
        body=body,
    )


def _undecodable(rng: random.Random, body: bytes) -> tuple[bytes, str]:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.choice([1, 7, 64, 1000])), "random bytes"
    if kind == 1 and len(body) > 1:
        return body[: rng.randrange(1, len(body))], "truncated"
    if kind == 2:
        return body + bytes([0x0A, 0xFF, 0xFF, 0xFF, 0x0F]), "length beyond the end"
    if kind == 3:
        return body + wire.key(rng.choice([1, 2, 9]), rng.choice([6, 7])) + b"\x01", "wire type 6/7"
    nested = b""
    for _ in range(rng.choice([150, 2000])):
        nested = wire.field_group(99, nested)
    return body + nested, "unknown groups nested beyond the recursion limit"


def _grpc_undecodable(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    case = _grpc_case(seed, index, "grpc-undecodable", rng, pool, Style(), "")
    body, note = _undecodable(rng, case.body)
    return Case(**{**case.__dict__, "body": body, "note": note})


def _invalid_utf8(f: FieldDescriptor, rng: random.Random, pool: Pool) -> bytes:
    if f.type == F.TYPE_BYTES:
        return plausible_string(f, rng, pool).encode()
    good = plausible_string(f, rng, pool).encode()
    cut = rng.randint(0, len(good))
    return good[:cut] + rng.choice(INVALID_UTF8) + good[cut:]


def _grpc_invalid_utf8(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    return _grpc_case(
        seed,
        index,
        "grpc-invalid-utf8",
        rng,
        pool,
        Style(include=0.9, string=_invalid_utf8),
        "invalid UTF-8, lone surrogates in strings",
    )


# --- JSON through the gateway -----------------------------------------------------------


def _path_value(name: str, rng: random.Random, pool: Pool) -> str:
    harvested = pool.by_field.get(name)
    if harvested and rng.random() < 0.7:
        return rng.choice(harvested)
    return rng.choice([_random_text(rng, 24), "x", "0", "-1", "..", "%", "a b"])


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    """A JSON message as the transcoder reads query parameters (dotted, repeated)."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _flatten(f"{prefix}{k}.", v)]
    key = prefix.rstrip(".")
    if isinstance(value, list):
        return [(key, _query_text(item)) for item in value]
    return [(key, _query_text(value))]


def _query_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "" if value is None else str(value)


def _encode_query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='.')}={quote(v, safe='')}" for k, v in pairs)


@dataclass
class JsonStyle:
    hostile: Callable[[random.Random], Any] | None = None
    include: float = 0.8
    path: Callable[[str, random.Random, Pool], str] | None = None  # raw, not yet encoded
    path_encoded: Callable[[str, random.Random, Pool], str] | None = None  # already encoded
    body: Callable[[random.Random, bytes], bytes] | None = None
    verb: Callable[[random.Random, str], str] | None = None
    extra_query: Callable[[random.Random], str] | None = None
    content_type: str = "application/json"


def _route_case(
    seed: int,
    index: int,
    category: str,
    rng: random.Random,
    pool: Pool,
    style: JsonStyle,
    note: str,
) -> Case:
    route: Route = rng.choice(schema.routes())
    request = json_message(route.rpc.input, rng, pool, style.hostile, include=style.include)
    path_values: dict[str, str] = {}
    for name in route.path_fields:
        request.pop(name, None)
        if style.path_encoded is not None and rng.random() < 0.7:
            path_values[name] = style.path_encoded(name, rng, pool)
        else:
            raw = style.path(name, rng, pool) if style.path else _path_value(name, rng, pool)
            path_values[name] = quote(str(raw), safe="")
    url = route.fill(path_values)
    body = b""
    query = ""
    if route.body:
        body = json.dumps(request, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    else:
        query = _encode_query(_flatten("", request))
    if style.extra_query is not None:
        query = "&".join(q for q in (query, style.extra_query(rng)) if q)
    if style.body is not None:
        body = style.body(rng, body)
    if query:
        url = f"{url}?{query}"
    verb = style.verb(rng, route.verb) if style.verb else route.verb
    headers = [("content-type", style.content_type)] if body else []
    return Case(
        seed,
        index,
        category,
        "http",
        str(route),
        _token(rng),
        note,
        rpc=route.rpc,
        body=body,
        verb=verb,
        url=url,
        headers=tuple(headers),
    )


def _json_fields(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    include = rng.choice([0.0, 0.3, 0.9])
    return _route_case(
        seed,
        index,
        "json-fields",
        rng,
        pool,
        JsonStyle(include=include),
        f"plausible values, fields present with p={include}",
    )


def _json_types(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    def unknown_field(r: random.Random, body: bytes) -> bytes:
        if not body or r.random() < 0.6:
            return body
        value = json.loads(body)
        value[r.choice(["nope", "entry_", "@type", "__proto__"])] = json_wrong_type(r)
        return json.dumps(value).encode()

    style = JsonStyle(hostile=json_wrong_type, body=unknown_field)
    return _route_case(
        seed,
        index,
        "json-types",
        rng,
        pool,
        style,
        "wrong JSON types, unknown enum names and fields",
    )


def _json_unicode(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    style = JsonStyle(hostile=hostile_string, path=lambda n, r, p: hostile_string(r)[:2000])
    return _route_case(
        seed,
        index,
        "json-unicode",
        rng,
        pool,
        style,
        "odd, overlong, NUL and control characters (body, path, query)",
    )


def _json_numbers(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    return _route_case(
        seed,
        index,
        "json-numbers",
        rng,
        pool,
        JsonStyle(hostile=json_extreme_number),
        "out-of-range numbers and timestamps",
    )


BAD_JSON = [
    b"{",
    b"}",
    b"[]",
    b"null",
    b"42",
    b'"text"',
    b'{"a":1,}',
    b"{'a': 1}",
    b'{"a":1}{"b":2}',
    b'{"a": 1} trailing',
    b'\xef\xbb\xbf{"a":1}',
    b'{"a":"\xff\xfe"}',
    b'{"a":"\\u00"}',
    b'{"a": NaN}',
    b'{"a": 1e99999}',
    b"\x00\x00\x00",
    b"<xml/>",
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
]


def _json_bad(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    def bad(r: random.Random, body: bytes) -> bytes:
        choice = r.random()
        if choice < 0.6:
            return r.choice(BAD_JSON)
        if choice < 0.8 and body:
            return body[: r.randrange(len(body))]
        return r.randbytes(r.choice([1, 16, 512]))

    content_type = rng.choice(
        [
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/grpc",
            "application/json; charset=latin1",
            "",
        ]
    )
    style = JsonStyle(body=bad, content_type=content_type)
    return _route_case(
        seed, index, "json-bad", rng, pool, style, f"bad JSON ({content_type or 'no content type'})"
    )


ODD_METHODS = [
    "PUT",
    "PATCH",
    "DELETE",
    "OPTIONS",
    "HEAD",
    "TRACE",
    "PROPFIND",
    "CONNECT",
    "FOO",
    "GET",
    "POST",
]


def _http_methods(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    style = JsonStyle(verb=lambda r, v: r.choice([m for m in ODD_METHODS if m != v]))
    return _route_case(
        seed, index, "http-methods", rng, pool, style, "another HTTP method on a JSON route"
    )


def _huge_query(rng: random.Random) -> str:
    size = rng.choice([8_000, 60_000, 200_000])
    kind = rng.randrange(3)
    if kind == 0:
        return "q=" + "A" * size
    if kind == 1:
        return "&".join(f"province={i}" for i in range(size // 12))
    return "&".join(f"x{i}=1" for i in range(size // 8))


def _http_huge_query(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    return _route_case(
        seed,
        index,
        "http-huge-query",
        rng,
        pool,
        JsonStyle(extra_query=_huge_query),
        "a huge query string",
    )


def _http_oversized(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    def big(r: random.Random, body: bytes) -> bytes:
        size = r.choice([GRPC_LIMIT + 1024, GATEWAY_BUFFER + 1])
        return b'{"name":"' + b"A" * size + b'"}'

    style = JsonStyle(body=big, verb=lambda r, v: "POST" if v == "GET" else v)
    return _route_case(
        seed,
        index,
        "http-oversized",
        rng,
        pool,
        style,
        "a body over the gRPC limit or the gateway's buffer",
    )


_BAD_PERCENT = ["%C3%28", "%ED%A0%80", "%FF", "%E4%B8", "%C0%AF", "%80", "%F4%90%80%80"]


def _http_invalid_utf8(seed: int, index: int, rng: random.Random, pool: Pool) -> Case:
    def encoded(name: str, r: random.Random, p: Pool) -> str:
        return quote(_path_value(name, r, p), safe="") + r.choice(_BAD_PERCENT)

    def query(r: random.Random) -> str:
        route_fields = ["province", "query", "enterprise_code", "ticket_id", "states"]
        return f"{r.choice(route_fields)}=a{r.choice(_BAD_PERCENT)}"

    def surrogate(r: random.Random, body: bytes) -> bytes:
        if body and r.random() < 0.5:
            value = json.loads(body)
            value[r.choice(["name", "account", "phone", "province"])] = "\\ud800"
            return json.dumps(value).replace("\\\\ud800", "\\ud800").encode()
        return body

    style = JsonStyle(path_encoded=encoded, extra_query=query, body=surrogate)
    return _route_case(
        seed,
        index,
        "http-invalid-utf8",
        rng,
        pool,
        style,
        "percent-encoded invalid UTF-8 in path and query, lone surrogate escapes",
    )


Generator = Callable[[int, int, random.Random, Pool], Case]


@dataclass(frozen=True)
class Category:
    name: str
    weight: int
    make: Generator


CATEGORIES = {
    c.name: c
    for c in (
        Category("grpc-plausible", 10, _grpc_plausible),
        Category("grpc-missing", 8, _grpc_missing),
        Category("grpc-wrong-type", 8, _grpc_wrong_type),
        Category("grpc-enum", 8, _grpc_enum),
        Category("grpc-unicode", 8, _grpc_unicode),
        Category("grpc-numbers", 8, _grpc_numbers),
        Category("grpc-mutated", 10, _grpc_mutated),
        Category("grpc-repeated", 3, _grpc_repeated),
        Category("grpc-oversized", 1, _grpc_oversized),
        Category("grpc-undecodable", 5, _grpc_undecodable),
        Category("grpc-invalid-utf8", 5, _grpc_invalid_utf8),
        Category("json-fields", 8, _json_fields),
        Category("json-types", 6, _json_types),
        Category("json-unicode", 6, _json_unicode),
        Category("json-numbers", 5, _json_numbers),
        Category("json-bad", 5, _json_bad),
        Category("http-methods", 3, _http_methods),
        Category("http-huge-query", 2, _http_huge_query),
        Category("http-oversized", 1, _http_oversized),
        Category("http-invalid-utf8", 4, _http_invalid_utf8),
    )
}


def category_of(seed: int, index: int, among: Sequence[str] | None = None) -> str:
    """The category the index-th case of a mixed run draws (by weight, among some)."""
    chosen = [CATEGORIES[name] for name in (among or CATEGORIES)]
    rng = random.Random(f"{seed}:{index}")
    return rng.choices(chosen, [c.weight for c in chosen])[0].name


def case(seed: int, index: int, pool: Pool, category: str) -> Case:
    """The index-th case of the seed in a category: the same request for the same
    (seed, index, category) and pool, whichever run it is part of."""
    rng = random.Random(f"{seed}:{index}:{category}")
    return CATEGORIES[category].make(seed, index, rng, pool)
