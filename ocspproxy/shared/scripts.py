"""The Lua scripts that keep the fleet's rules inside Redis, where they hold under concurrency: two
instances writing different responses for one key end with the one the accept policy keeps
(``core.policy.accept``: newer only; revoked beats good on a tie; unknown never replaces good;
identical bytes change nothing), whatever the timing.

The fields compared are the writers' own (every writer validated the bytes first); an entry whose
fields lie is found out by the next instance that reads it (the door) and replaced with
``REPAIR``.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "DERS", "DROP", "PUT", "RELEASE", "TIMES"]

# put(entry, der, tu, pa, st, nu, now, channel, message): 1 written (and published), 0 kept.
_PUT_FUNCTION = """
local function newer(a_tu, a_pa, b_tu, b_pa)
  return a_tu > b_tu or (a_tu == b_tu and a_pa > b_pa)
end
local function put(entry, der, tu, pa, st, nu, now, channel, message, replace)
  local cur = redis.call('HMGET', entry, 'der', 'tu', 'pa', 'st', 'nu')
  local ctu, cpa, cnu = tonumber(cur[2]), tonumber(cur[3]), tonumber(cur[5])
  if nu <= now then return 0 end
  local bad = replace ~= '' and cur[1] and redis.sha1hex(cur[1]) == replace
  if cur[1] and not bad and ctu and cpa and cnu and cnu > now then
    if cur[1] == der then return 0 end
    local turned = cur[4] == 'good' and st == 'revoked'
    if turned then
      if newer(ctu, cpa, tu, pa) then return 0 end
    else
      if not newer(tu, pa, ctu, cpa) then return 0 end
      if cur[4] == 'good' and st == 'unknown' then return 0 end
    end
  end
  redis.call('DEL', entry)
  redis.call('HSET', entry, 'der', der, 'tu', tu, 'pa', pa, 'st', st, 'nu', nu)
  redis.call('PEXPIREAT', entry, nu)
  redis.call('PUBLISH', channel, message)
  return 1
end
"""

# KEYS: entry; ARGV: der tu pa st nu now channel message [replace]. ``replace``: the SHA-1 (hex) of
# the bytes of an entry found invalid, overwritten whatever its fields say.
PUT = (
    _PUT_FUNCTION
    + """
return put(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]),
           tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9] or '')
"""
)

# KEYS: lease, done, entry; ARGV: token ttl_ms have_tu have_pa now.
# {1, der, tu, pa}: take this answer (newer than ours, or the CA was just asked); {0}: fetch, the lease is
# ours; {2, pttl}: another holds the lease for pttl more milliseconds.
ACQUIRE = """
local e = redis.call('HMGET', KEYS[3], 'der', 'tu', 'pa', 'nu')
local now = tonumber(ARGV[5])
local tu, pa, nu = tonumber(e[2]), tonumber(e[3]), tonumber(e[4])
if e[1] and tu and pa and nu and nu > now then
  local have_tu, have_pa = tonumber(ARGV[3]), tonumber(ARGV[4])
  if tu > have_tu or (tu == have_tu and pa > have_pa) or redis.call('EXISTS', KEYS[2]) == 1 then
    return {1, e[1], e[2], e[3]}
  end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0}
end
return {2, redis.call('PTTL', KEYS[1])}
"""

# KEYS: lease, done, entry; ARGV: token quiet_ms [der tu pa st nu now channel message].
# The lease goes only if it is still ours; the answer is written (with the policy) and the others
# are told not to ask the CA again for quiet_ms.
RELEASE = (
    _PUT_FUNCTION
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[3] then
  put(KEYS[3], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]),
      tonumber(ARGV[8]), ARGV[9], ARGV[10], '')
  if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[2], ARGV[8], 'PX', ARGV[2]) end
end
return 1
"""
)

# KEYS: entry; ARGV: sha1 channel message. Remove an entry found invalid (by the SHA-1 of its bytes,
# so that a good one written meanwhile stays) and announce it: an instance holding a staple for
# the key writes it then.
DROP = """
local der = redis.call('HGET', KEYS[1], 'der')
if der and redis.sha1hex(der) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"""

# Reading in bulk: one command per batch instead of one per key (a fresh instance reads 100,000).
# KEYS: entries. TIMES: tu, pa of each, flat; DERS: the bytes of each ('' for a missing one).
TIMES = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'tu', 'pa')
  out[2 * i - 1] = v[1] or ''
  out[2 * i] = v[2] or ''
end
return out
"""

DERS = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HGET', key, 'der') or ''
end
return out
"""
