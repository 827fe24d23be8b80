"""The SMS service's decisions in the store, one script each (etax_platform.kv.Script):
Lua on Redis, a Python twin that applies the rules of domain.py in memory.

- SEND (E2): takes a send slot of the recipient's window and stores the code record, or
  refuses; the throttle and the code are records of one owner (the recipient's bucket),
  so they share a Redis Cluster slot.
- GIVE_BACK: a delivery the provider refused: the code goes, the slot comes back.
- VERIFY: one attempt at a code: counts it, consumes the record on success (single use).
- OUTBOX_ADD, OUTBOX_READ: the development outbox (newest messages per recipient).

Records are hashes. Throttle: started_ms, sends. Code: channel, recipient_sealed,
purpose, digest, sent_ms, expires_ms, attempts. Numbers are kept as the decimal text
the caller sent, never formatted by Lua.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import cast

from etax.sms.v1 import sms_pb2

from etax_platform.clock import from_millis
from etax_platform.errors import DomainError, Reason
from etax_platform.kv import Records, Reply, Script
from services.sms import domain
from services.sms.domain import CodeRecord, Purpose, SendWindow, Verified

# --- SEND -------------------------------------------------------------------------------

# KEYS: throttle, code. ARGV: now_ms, limit, window_ms, throttle_ttl_ms, code_ttl_ms,
# channel, recipient_sealed, purpose, digest, expires_ms, attempts.
# Reply: {allowed (1/0), window_started_ms, sends_left, retry_after_ms}.
_SEND_LUA = """
local now, limit, length = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window = redis.call('HMGET', KEYS[1], 'started_ms', 'sends')
local started, sends = window[1], tonumber(window[2])
if started == false or sends == nil or now >= tonumber(started) + length then
  started, sends = ARGV[1], 0
end
if sends >= limit then
  return {0, tonumber(started), 0, tonumber(started) + length - now}
end
sends = sends + 1
redis.call('HSET', KEYS[1], 'started_ms', started, 'sends', sends)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('HSET', KEYS[2], 'channel', ARGV[6], 'recipient_sealed', ARGV[7],
  'purpose', ARGV[8], 'digest', ARGV[9], 'sent_ms', ARGV[1], 'expires_ms', ARGV[10],
  'attempts', ARGV[11])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {1, tonumber(started), limit - sends, 0}
"""


def _window(records: Records, key: str) -> SendWindow | None:
    started, sends = records.hmget(key, "started_ms", "sends")
    if started is None or sends is None:
        return None
    return SendWindow(int(started), int(sends))


def _send_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> Reply:
    now_ms, limit, length_ms = int(args[0]), int(args[1]), int(args[2])
    window, decision = domain.take_send_slot(
        _window(records, keys[0]), from_millis(now_ms), limit, timedelta(milliseconds=length_ms)
    )
    if not decision.allowed:
        return [0, decision.window_started_ms, 0, int(decision.retry_after.total_seconds() * 1000)]
    records.hset(keys[0], {"started_ms": window.started_ms, "sends": window.sends})
    records.pexpire(keys[0], int(args[3]))
    names = ("channel", "recipient_sealed", "purpose", "digest")
    records.hset(
        keys[1],
        {
            **dict(zip(names, args[5:9], strict=True)),
            "sent_ms": args[0],
            "expires_ms": args[9],
            "attempts": args[10],
        },
    )
    records.pexpire(keys[1], int(args[4]))
    return [1, window.started_ms, decision.sends_left, 0]


SEND = Script("sms-send", _SEND_LUA, _send_twin)

# --- GIVE_BACK ----------------------------------------------------------------------------

# KEYS: throttle, code. ARGV: window_started_ms (of the slot taken).
_GIVE_BACK_LUA = """
redis.call('DEL', KEYS[2])
local window = redis.call('HMGET', KEYS[1], 'started_ms', 'sends')
if window[1] == ARGV[1] and tonumber(window[2]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'sends', -1)
end
return 1
"""


def _give_back_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> Reply:
    records.delete(keys[1])
    window = _window(records, keys[0])
    given_back = domain.give_back_send_slot(window, int(args[0]))
    if window is not None and given_back is not None and given_back != window:
        records.hincrby(keys[0], "sends", given_back.sends - window.sends)
    return 1


GIVE_BACK = Script("sms-give-back", _GIVE_BACK_LUA, _give_back_twin)

# --- VERIFY -------------------------------------------------------------------------------

# KEYS: code. ARGV: now_ms, presented digest, purpose.
# Reply: {'expired'} | {'wrong', attempts_left, channel} | {'purpose', channel} |
#        {'ok', channel, recipient_sealed, purpose}.
# The digests are compared in constant time (DESIGN: one-time codes).
_VERIFY_LUA = """
local r = redis.call('HMGET', KEYS[1], 'digest', 'expires_ms', 'attempts', 'purpose',
  'channel', 'recipient_sealed')
if r[1] == false then return {'expired'} end
if tonumber(ARGV[1]) >= tonumber(r[2]) or tonumber(r[3]) <= 0 then
  redis.call('DEL', KEYS[1])
  return {'expired'}
end
local a, b, d = r[1], ARGV[2], 0
if #a ~= #b then d = 1 end
for i = 1, math.min(#a, #b) do d = bit.bor(d, bit.bxor(a:byte(i), b:byte(i))) end
if d ~= 0 then
  local left = redis.call('HINCRBY', KEYS[1], 'attempts', -1)
  if left <= 0 then redis.call('DEL', KEYS[1]) end
  return {'wrong', left, r[5]}
end
redis.call('DEL', KEYS[1])
if r[4] ~= ARGV[3] then return {'purpose', r[5]} end
return {'ok', r[5], r[6], r[4]}
"""


def _verify_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> Reply:
    fields = records.hmget(
        keys[0], "digest", "expires_ms", "attempts", "purpose", "channel", "recipient_sealed"
    )
    digest, expires_ms, attempts, purpose, channel, sealed = fields
    record = None
    if digest is not None:
        record = CodeRecord(
            channel=cast(sms_pb2.Channel, int(channel or b"0")),
            recipient_sealed=(sealed or b"").decode(),
            purpose=cast(Purpose, int(purpose or b"0")),
            digest=digest.decode(),
            sent_ms=0,
            expires_ms=int(expires_ms or b"0"),
            attempts_left=int(attempts or b"0"),
        )
    after, outcome = domain.try_code(
        record,
        from_millis(int(args[0])),
        cast(Purpose, int(args[2])),
        args[1].decode(),
    )
    if after is None:
        records.delete(keys[0])
    elif record is not None and after.attempts_left != record.attempts_left:
        records.hincrby(keys[0], "attempts", after.attempts_left - record.attempts_left)
    if isinstance(outcome, Verified):
        return [b"ok", channel, sealed, purpose]
    if outcome.reason is Reason.CODE_INVALID:
        return [b"wrong", int(outcome.metadata["remaining_attempts"]), channel]
    if outcome.reason is Reason.CODE_PURPOSE_MISMATCH:
        return [b"purpose", channel]
    return [b"expired"]


VERIFY = Script("sms-verify", _VERIFY_LUA, _verify_twin)


def verify_outcome(reply: Reply) -> tuple[int, str, int] | DomainError:
    """VERIFY's reply as (channel, recipient_sealed, purpose), or the error to raise."""
    kind = reply[0]
    if kind == b"ok":
        return int(reply[1]), reply[2].decode(), int(reply[3])
    if kind == b"wrong":
        return domain.wrong_code(int(reply[1]))
    if kind == b"purpose":
        return DomainError(Reason.CODE_PURPOSE_MISMATCH)
    return DomainError(Reason.CODE_EXPIRED)


def verified_channel(reply: Reply) -> int | None:
    """The channel of the code VERIFY found (for the metrics); None: no live code."""
    kind = reply[0]
    if kind == b"wrong":
        return int(reply[2])
    if kind in (b"ok", b"purpose"):
        return int(reply[1])
    return None


# --- the development outbox ---------------------------------------------------------------

# KEYS: outbox. ARGV: message (JSON), how many to keep, ttl_ms. Fields: seq, m<seq>.
_OUTBOX_ADD_LUA = """
local n = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'm' .. n, ARGV[1])
local keep = tonumber(ARGV[2])
if n > keep then redis.call('HDEL', KEYS[1], 'm' .. (n - keep)) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return n
"""


def _outbox_add_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> Reply:
    n = records.hincrby(keys[0], "seq", 1)
    records.hset(keys[0], {f"m{n}": args[0]})
    keep = int(args[1])
    if n > keep:
        records.hdel(keys[0], f"m{n - keep}")
    records.pexpire(keys[0], int(args[2]))
    return n


OUTBOX_ADD = Script("sms-outbox-add", _OUTBOX_ADD_LUA, _outbox_add_twin)

# KEYS: outbox. ARGV: how many are kept. Reply: the messages, newest first.
_OUTBOX_READ_LUA = """
local n = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local found = {}
for i = n, math.max(1, n - tonumber(ARGV[1]) + 1), -1 do
  local m = redis.call('HGET', KEYS[1], 'm' .. i)
  if m then table.insert(found, m) end
end
return found
"""


def _outbox_read_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> Reply:
    n = int(records.hget(keys[0], "seq") or b"0")
    found = (records.hget(keys[0], f"m{i}") for i in range(n, max(1, n - int(args[0]) + 1) - 1, -1))
    return [m for m in found if m is not None]


OUTBOX_READ = Script("sms-outbox-read", _OUTBOX_READ_LUA, _outbox_read_twin)
