"""Auth's decisions in the store, one script each (etax_platform.kv.Script): Lua on Redis,
a Python twin that applies the rules of lockout.py and flows.py in memory.

The lockout record of a person's CST day is a hash of consecutive failures per method
(password, sms_code, face). A login challenge is a versioned record (flows.py) whose key
carries its person's owner tag, as the lockout record's does, so one script can count the
attempt and read the challenge, or end the run and consume the challenge (Redis Cluster:
one slot).

- COUNT: E1's attempt, counted before the credential is checked (or the lock that
  refuses it). CLEAR, UNCOUNT, ADD, READ: the rest of the lockout record.
  TAKE_IF_LOCKED: yesterday's record, taken if it was locked (a midnight unlock).
- CLEAR_AND_CREATE: login step 1's password was right: its run ends and the challenge
  is stored.
- COUNT_AND_LOAD: login step 2 by code: the challenge, checked, and the code attempt
  counted for its person.
- CLEAR_AND_CONSUME: the code was right: its run ends and the challenge is taken.
"""

from __future__ import annotations

from collections.abc import Sequence

from etax_platform.clock import from_millis
from etax_platform.kv import Records, Reply, Script
from services.auth.flows import Flow

# A lockout's count, as Lua compares it: MAX_CONSECUTIVE_FAILURES comes as an argument.
_COUNT_BODY = """
local function count(day, method, max, ttl, first)
  for i = first, #ARGV do
    local run = tonumber(redis.call('HGET', day, ARGV[i]) or '0')
    if run >= max then return {'locked', ARGV[i]} end
  end
  local fresh = 1 - redis.call('EXISTS', day)
  local run = redis.call('HINCRBY', day, method, 1)
  redis.call('PEXPIRE', day, ttl)
  return {'counted', run, fresh}
end
"""


def _count_twin(
    records: Records, day: str, args: Sequence[bytes], covering: Sequence[bytes]
) -> list[bytes | int]:
    """`count` of the Lua: args are method, max, ttl_ms."""
    method, limit, ttl_ms = args[0], int(args[1]), int(args[2])
    for name in covering:
        if int(records.hget(day, name.decode()) or b"0") >= limit:
            return [b"locked", name]
    fresh = 0 if records.exists(day) else 1
    run = records.hincrby(day, method.decode(), 1)
    records.pexpire(day, ttl_ms)
    return [b"counted", run, fresh]


# --- COUNT --------------------------------------------------------------------------------

# KEYS: day. ARGV: method, max, ttl_ms, then the methods whose lock covers it (highest
# level first). Reply: {'locked', method} | {'counted', run, fresh} (fresh: 1 when the day
# had no record before this attempt).
COUNT = Script(
    "auth-count",
    _COUNT_BODY + "return count(KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3], 4)\n",
    lambda records, keys, args: _count_twin(records, keys[0], args[:3], args[3:]),
)

# --- CLEAR, UNCOUNT, ADD, READ -------------------------------------------------------------


def _clear_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> Reply:
    records.hdel(keys[0], *(name.decode() for name in args))
    return 1


# KEYS: day. ARGV: methods whose run ends. (A hash without fields is gone.)
CLEAR = Script("auth-clear", "redis.call('HDEL', KEYS[1], unpack(ARGV))\nreturn 1\n", _clear_twin)


def _uncount_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> Reply:
    name = args[0].decode()
    run = int(records.hget(keys[0], name) or b"0")
    if run > 1:
        records.hincrby(keys[0], name, -1)
    elif run == 1:
        records.hdel(keys[0], name)
    return 1


# KEYS: day. ARGV: method. An attempt whose check could not be made does not count.
UNCOUNT = Script(
    "auth-uncount",
    """
local run = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if run > 1 then redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
elseif run == 1 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
""",
    _uncount_twin,
)


def _add_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> Reply:
    records.hincrby(keys[0], args[0].decode(), int(args[1]))
    records.pexpire(keys[0], int(args[2]))
    return 1


# KEYS: day. ARGV: method, failures, ttl_ms (failures learnt after the fact).
ADD = Script(
    "auth-add",
    """
redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
""",
    _add_twin,
)

# KEYS: day. ARGV: methods. Reply: their runs (nil: none).
READ = Script(
    "auth-read",
    "return redis.call('HMGET', KEYS[1], unpack(ARGV))\n",
    lambda records, keys, args: records.hmget(keys[0], *(name.decode() for name in args)),
)


def _take_if_locked_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> Reply:
    limit = int(args[0])
    if any(int(records.hget(keys[0], name.decode()) or b"0") >= limit for name in args[1:]):
        records.delete(keys[0])
        return 1
    return 0


# KEYS: a past day. ARGV: max, methods. Reply: 1 if a method was locked that day (the
# record is then deleted, so the unlock is counted once), else 0.
TAKE_IF_LOCKED = Script(
    "auth-take-if-locked",
    """
for i = 2, #ARGV do
  if tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') >= tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[1])
    return 1
  end
end
return 0
""",
    _take_if_locked_twin,
)

# --- CLEAR_AND_CREATE ----------------------------------------------------------------------


def _clear_and_create_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> Reply:
    records.hdel(keys[0], args[0].decode())
    if records.exists(keys[1]):
        return 0
    records.hset(keys[1], {"v": args[1], "n": 1})
    records.pexpire(keys[1], int(args[2]))
    return 1


# KEYS: day, challenge. ARGV: method whose run ends, the challenge, its ttl_ms.
# Reply: 1, or 0 if the challenge id exists (128 random bits: never).
CLEAR_AND_CREATE = Script(
    "auth-clear-and-create",
    """
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'v', ARGV[2], 'n', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
""",
    _clear_and_create_twin,
)

# --- COUNT_AND_LOAD ------------------------------------------------------------------------

# KEYS: challenge, day. ARGV: now_ms, method, max, ttl_ms, then the covering methods.
# Reply: {'invalid'} (gone or past its deadline) | {'no_person'} | {'no_identity'} |
# {'no_code'} | {'locked', method, challenge} | {'counted', run, challenge}.
_COUNT_AND_LOAD_LUA = (
    _COUNT_BODY
    + """
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return {'invalid'} end
local flow = cjson.decode(v)
if tonumber(flow.expires_at) <= tonumber(ARGV[1]) then return {'invalid'} end
if flow.person_id == '' then return {'no_person'} end
if flow.identity == '' then return {'no_identity'} end
if flow.verification_id == '' then return {'no_code'} end
local counted = count(KEYS[2], ARGV[2], tonumber(ARGV[3]), ARGV[4], 5)
return {counted[1], counted[2], v}
"""
)


def _count_and_load_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> Reply:
    raw = records.hget(keys[0], "v")
    if raw is None:
        return [b"invalid"]
    flow = Flow.from_bytes(raw)
    if not flow.is_live(from_millis(int(args[0]))):
        return [b"invalid"]
    if not flow.person_id:
        return [b"no_person"]
    if not flow.identity:
        return [b"no_identity"]
    if not flow.verification_id:
        return [b"no_code"]
    counted = _count_twin(records, keys[1], args[1:4], args[4:])
    return [counted[0], counted[1], raw]


COUNT_AND_LOAD = Script("auth-count-and-load", _COUNT_AND_LOAD_LUA, _count_and_load_twin)

# --- CLEAR_AND_CONSUME ---------------------------------------------------------------------


def _clear_and_consume_twin(records: Records, keys: Sequence[str], args: Sequence[bytes]) -> Reply:
    records.hdel(keys[0], args[0].decode())
    raw = records.hget(keys[1], "v")
    records.delete(keys[1])
    return raw


# KEYS: day, challenge. ARGV: method whose run ends. Reply: the challenge taken (nil:
# another completion took it first).
CLEAR_AND_CONSUME = Script(
    "auth-clear-and-consume",
    """
redis.call('HDEL', KEYS[1], ARGV[1])
local v = redis.call('HGET', KEYS[2], 'v')
redis.call('DEL', KEYS[2])
return v
""",
    _clear_and_consume_twin,
)
