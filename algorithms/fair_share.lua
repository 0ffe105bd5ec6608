local t = redis.call('TIME')
-- fair_share: a pool of `limit` hits per epoch-aligned window of window_ms, shared max-min
-- fairly by the tenants active in it (seen within idle_ms), in proportion to their weights.
-- fair_j = floor(pool * weight_j / sum of active weights); reserved = sum over active tenants
-- of max(0, fair_j - used_j), kept up to date incrementally and recomputed over the active
-- tenants only when the set (or a weight, or the pool) changes.
-- KEYS[1]: hash {w = window index, t = hits used in it, s = sum of active weights,
--          f = sum of fair shares, r = reserved, p = the pool they were computed for}
-- KEYS[2]: sorted set {tenant: last seen, ms}   (active tenants)
-- KEYS[3]: hash {tenant: weight}                 (active tenants)
-- KEYS[4]: hash {tenant: hits used in window w}  (deleted when the window changes)
-- ARGV: limit, window_ms, burst (unused), hits, count_rejected (0/1), tenant, weight, idle_ms.
-- Returns {allowed, remaining, limit, reset_after_ms, retry_after_ms, shed}.
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pool = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local hits = tonumber(ARGV[4])
local count_rejected = ARGV[5] == '1'
local member = ARGV[6]
local weight = tonumber(ARGV[7])
local idle = tonumber(ARGV[8])
local max_count = 4503599627370496

local idx = math.floor(now / window)
local reset = window - (now - idx * window)

local h = redis.call('HMGET', KEYS[1], 'w', 't', 's', 'f', 'r', 'p')
local total, sumw, sumfair, reserved = 0, 0, 0, 0
local rolled = tonumber(h[1]) ~= idx
local recompute = h[1] == false or h[3] == false or tonumber(h[6]) ~= pool
if not recompute then
  sumw, sumfair = tonumber(h[3]), tonumber(h[4])
end
if rolled then
  redis.call('DEL', KEYS[4])
else
  total, reserved = tonumber(h[2]), tonumber(h[5])
end

-- Tenants idle for idle_ms leave the active set.
local cutoff = string.format('%d', now - idle)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
  for i = 1, #gone, 1000 do
    redis.call('HDEL', KEYS[3], unpack(gone, i, math.min(i + 999, #gone)))
  end
  recompute = true
end
-- The tenant is active from now on; a new tenant or a new weight changes every fair share.
if tonumber(redis.call('HGET', KEYS[3], member)) ~= weight then
  redis.call('HSET', KEYS[3], member, weight)
  recompute = true
end
redis.call('ZADD', KEYS[2], string.format('%d', now), member)

if recompute then
  local wl = redis.call('HGETALL', KEYS[3])
  local used = {}
  if not rolled then
    local ul = redis.call('HGETALL', KEYS[4])
    for i = 1, #ul, 2 do used[ul[i]] = tonumber(ul[i + 1]) end
  end
  sumw, sumfair, reserved = 0, 0, 0
  for i = 2, #wl, 2 do sumw = sumw + tonumber(wl[i]) end
  for i = 1, #wl, 2 do
    local fj = math.floor(pool * tonumber(wl[i + 1]) / sumw)
    sumfair = sumfair + fj
    local gj = fj - (used[wl[i]] or 0)
    if gj > 0 then reserved = reserved + gj end
  end
elseif rolled then
  reserved = sumfair
end

local used = 0
if not rolled then used = tonumber(redis.call('HGET', KEYS[4], member)) or 0 end
local used_before = used
local fair = math.floor(pool * weight / sumw)
local own = fair - used
if own < 0 then own = 0 end
-- What the other active tenants may still claim of their fair shares.
local others = reserved - own

local h_pos = hits
if hits < 0 then
  -- A refund gives back what this tenant used in this window, never more.
  local take = math.min(used, -hits)
  used = used - take
  total = total - take
  h_pos = 0
end
local allowed = total + h_pos <= pool and (used + h_pos <= fair or total + h_pos + others <= pool)
local shed = not allowed and hits <= pool and total + h_pos <= pool
if hits > 0 and (allowed or count_rejected) then
  local add = math.min(hits, max_count - total)
  used = used + add
  total = total + add
end
own = fair - used
if own < 0 then own = 0 end
reserved = others + own

local retry = 0
if not allowed and hits <= pool then retry = reset end
local remaining = math.max(fair - used, pool - total - others)
if remaining > pool - total then remaining = pool - total end
if remaining < 0 then remaining = 0 end

redis.call('HSET', KEYS[1], 'w', string.format('%d', idx), 't', string.format('%d', total),
  's', string.format('%d', sumw), 'f', string.format('%d', sumfair),
  'r', string.format('%d', reserved), 'p', string.format('%d', pool))
if used ~= used_before then
  if used > 0 then
    redis.call('HSET', KEYS[4], member, string.format('%d', used))
  else
    redis.call('HDEL', KEYS[4], member)
  end
end
local ttl = math.max(reset, idle)
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end
return {allowed and 1 or 0, remaining, pool, reset, retry, shed and 1 or 0}
