"""The shared limiter's Redis scripts: admission, settlement and seeding, each one atomic.

They keep the arithmetic of router/accounting/limits.py (same windows, same order of checks,
same settlement rules) on one hash per key, so a key has the same limits whichever router a
request reaches. Reservations are leases: a member of the key's lease set scored by its expiry,
renewed by the router that holds it; a script that finds an expired lease settles it as if the
whole reservation had been used (its router died, and the backend may have done the work).

Every number crosses as a string (Lua turns numbers into integers in replies).
"""

from __future__ import annotations

from router.accounting.resp import Script

# The state hash's fields, in the order the scripts return them; see limits.KeyState.
FIELDS = ("rs", "rc", "ts", "tu", "tr", "inf", "day", "dr", "ar", "ms", "me", "mr",
          "dq", "dt", "dp", "dc", "dx", "da", "mq", "mt", "mp", "mc", "mx", "ma")

_COMMON = """
local F = {%s}
local s = {}
local function load()
  local values = redis.call('HMGET', KEYS[1], unpack(F))
  for i, name in ipairs(F) do s[name] = tonumber(values[i]) or 0 end
end
local function save()
  local args = {}
  for _, name in ipairs(F) do args[#args + 1] = name; args[#args + 1] = tostring(s[name]) end
  redis.call('HSET', KEYS[1], unpack(args))
end
local function state()
  local out = {}
  for i, name in ipairs(F) do out[i] = tostring(s[name]) end
  return out
end
local function roll(now, month_start, month_end)
  if now - s.rs >= 60 then s.rs = now; s.rc = 0 end
  if now - s.ts >= 60 then s.ts = now; s.tu = 0; s.tr = 0 end
  local day = math.floor(now / 86400)
  if day ~= s.day then
    s.day = day; s.dr = 0; s.ar = 0
    s.dq = 0; s.dt = 0; s.dp = 0; s.dc = 0; s.dx = 0; s.da = 0
    if now >= s.me then
      s.ms = month_start; s.me = month_end; s.mr = 0
      s.mq = 0; s.mt = 0; s.mp = 0; s.mc = 0; s.mx = 0; s.ma = 0
    end
  end
end
local function settle(now, month_start, month_end, admitted, reserved, audio, prompt, completion, reasoning, heard)
  roll(now, month_start, month_end)
  s.inf = s.inf - 1
  if admitted >= s.ts then s.tr = s.tr - reserved; s.tu = s.tu + prompt + completion end
  if math.floor(admitted / 86400) == s.day then s.dr = s.dr - reserved; s.ar = s.ar - audio end
  if admitted >= s.ms then s.mr = s.mr - reserved end
  s.dq = s.dq + 1; s.dt = s.dt + prompt + completion; s.dp = s.dp + prompt; s.dc = s.dc + completion
  s.dx = s.dx + reasoning; s.da = s.da + heard
  s.mq = s.mq + 1; s.mt = s.mt + prompt + completion; s.mp = s.mp + prompt; s.mc = s.mc + completion
  s.mx = s.mx + reasoning; s.ma = s.ma + heard
end
-- Leases past their expiry: their router stopped renewing them (it died or lost Redis).
local function reclaim(now, month_start, month_end)
  local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, id in ipairs(dead) do
    local held = redis.call('HGET', KEYS[3], id)
    if held then
      local reserved, audio, admitted = string.match(held, '([^,]+),([^,]+),([^,]+)')
      reserved = tonumber(reserved); audio = tonumber(audio); admitted = tonumber(admitted)
      settle(now, month_start, month_end, admitted, reserved, audio, reserved, 0, 0, audio)
      redis.call('HDEL', KEYS[3], id)
    end
    redis.call('ZREM', KEYS[2], id)
  end
  return #dead
end
""" % ", ".join(f"'{name}'" for name in FIELDS)

# KEYS: state hash, lease set, reservation hash.
# ARGV: now, month_start, month_end, rpm, tpm, max_parallel, daily_tokens, monthly_tokens,
#       daily_audio_seconds ("" = unlimited), reserve, audio, reservation id, lease expiry.
# Returns {"seed"} when the key has no state yet, else {"ok" | refused limit name, state...}.
ADMIT = Script(_COMMON + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'seed'} end
load()
if redis.call('HEXISTS', KEYS[3], ARGV[12]) == 1 then  -- a retry of an admission already made
  local out = state(); table.insert(out, 1, 'ok'); return out
end
local now, month_start, month_end = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rpm, tpm, parallel = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local daily, monthly, heard = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local reserve, audio = tonumber(ARGV[10]), tonumber(ARGV[11])
reclaim(now, month_start, month_end)
roll(now, month_start, month_end)
local refused = nil
if daily and s.dt + s.dr + reserve > daily then refused = 'daily_tokens'
elseif monthly and s.mt + s.mr + reserve > monthly then refused = 'monthly_tokens'
elseif audio > 0 and heard and s.da + s.ar + audio > heard then refused = 'daily_audio_seconds'
elseif tpm and s.tu + s.tr + reserve > tpm then refused = 'tpm'
elseif rpm and s.rc >= rpm then refused = 'rpm'
elseif parallel and s.inf >= parallel then refused = 'max_parallel'
end
if refused then
  save()
  local out = state(); table.insert(out, 1, refused); return out
end
s.rc = s.rc + 1; s.inf = s.inf + 1
s.tr = s.tr + reserve; s.dr = s.dr + reserve; s.mr = s.mr + reserve; s.ar = s.ar + audio
save()
redis.call('ZADD', KEYS[2], ARGV[13], ARGV[12])
redis.call('HSET', KEYS[3], ARGV[12], ARGV[10] .. ',' .. ARGV[11] .. ',' .. ARGV[1])
local out = state(); table.insert(out, 1, 'ok'); return out
""")

# KEYS: as ADMIT. ARGV: now, month_start, month_end, reservation id, prompt, completion,
# reasoning, audio seconds. Returns 1, or 0 when the lease had expired and was settled already.
SETTLE = Script(_COMMON + """
local held = redis.call('HGET', KEYS[3], ARGV[4])
if not held or redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HDEL', KEYS[3], ARGV[4]); redis.call('ZREM', KEYS[2], ARGV[4])
  return 0
end
load()
local reserved, audio, admitted = string.match(held, '([^,]+),([^,]+),([^,]+)')
settle(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(admitted), tonumber(reserved),
       tonumber(audio), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]))
save()
redis.call('HDEL', KEYS[3], ARGV[4]); redis.call('ZREM', KEYS[2], ARGV[4])
return 1
""")

# KEYS: as ADMIT. ARGV: now, month_start, month_end, then today's and this month's totals as
# requests, prompt, completion, reasoning, audio. Only the first seed of a key counts (returns 1).
SEED = Script(_COMMON + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now = tonumber(ARGV[1])
s.rs = now; s.ts = now; s.rc = 0; s.tu = 0; s.tr = 0; s.inf = 0
s.day = math.floor(now / 86400); s.dr = 0; s.ar = 0
s.ms = tonumber(ARGV[2]); s.me = tonumber(ARGV[3]); s.mr = 0
s.dq = tonumber(ARGV[4]); s.dp = tonumber(ARGV[5]); s.dc = tonumber(ARGV[6]); s.dx = tonumber(ARGV[7])
s.da = tonumber(ARGV[8]); s.dt = s.dp + s.dc
s.mq = tonumber(ARGV[9]); s.mp = tonumber(ARGV[10]); s.mc = tonumber(ARGV[11]); s.mx = tonumber(ARGV[12])
s.ma = tonumber(ARGV[13]); s.mt = s.mp + s.mc
save()
return 1
""")

# KEYS: state hash, lease set, reservation hash. ARGV: now, month_start, month_end.
# Settles expired leases and returns the state (for /v1/me); {"seed"} when the key has none.
READ = Script(_COMMON + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'seed'} end
load()
local now, month_start, month_end = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
reclaim(now, month_start, month_end)
roll(now, month_start, month_end)
save()
return state()
""")
