local t = redis.call('TIME')
-- fair_share: a pool of `limit` hits per epoch-aligned window of window_ms, shared max-min
-- fairly by the tenants active in it (seen within idle_ms), in proportion to their weights.
-- fair_j = floor(pool * weight_j / sumw), sumw the sum of the active weights; reserved = sum
-- over active tenants of max(0, fair_j - used_j), kept up to date incrementally. When the
-- active set, a weight or the pool changes, every fair share changes and reserved is
-- recomputed without walking the active tenants:
--   reserved = sumfair - active_used + excess, where
--   sumfair = sum over weights w of count_w * floor(pool * w / sumw)   (count_w: active tenants
--             of weight w; O(distinct weights)),
--   active_used = the hits used in the window by the active tenants   (kept incrementally),
--   excess = sum of used_j - fair_j over the active tenants above their share, which are the
--            members of KEYS[5] scored above pool / sumw (used_j > floor(pool * w_j / sumw) iff
--            used_j / w_j > pool / sumw; the doubles compare exactly, see fairShare).
-- KEYS[1]: hash {w = window index, t = hits used in it, s = sum of active weights,
--          f = sum of fair shares, r = reserved, p = the pool they were computed for,
--          u = hits used in window w by the active tenants, v = 2 (this layout)}
-- KEYS[2]: sorted set {tenant: last seen, ms}   (active tenants)
-- KEYS[3]: hash {tenant: weight}                 (active tenants)
-- KEYS[4]: hash {tenant: hits used in window w}  (deleted when the window changes)
-- KEYS[5]: sorted set {tenant: used / weight}    (active tenants with hits used in window w)
-- KEYS[6]: hash {weight: active tenants of that weight}
-- A header without v = 2 (none, or the former layout of KEYS[1..4]) is rebuilt from KEYS[3]
-- and KEYS[4], once, in O(active tenants).
-- ARGV: limit, window_ms, burst (unused), hits, mode (0 normal, 1 count_rejected, 2 dry run),
--       tenant, weight, idle_ms.
-- Returns {allowed, remaining, limit, reset_after_ms, retry_after_ms, shed}.
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pool = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local hits = tonumber(ARGV[4])
local count_rejected = ARGV[5] == '1'
-- A dry run computes the same reply as a normal call and writes nothing: the tenant counts as
-- active (with its weight) and idle tenants as gone, locally.
local dry = ARGV[5] == '2'
local member = ARGV[6]
local weight = tonumber(ARGV[7])
local idle = tonumber(ARGV[8])
local max_count = 4503599627370496

-- chunks calls fn(i, j) over [1, n] in ranges of at most 1000, for unpack.
local function chunks(n, fn)
  for i = 1, n, 1000 do fn(i, math.min(i + 999, n)) end
end
-- hmget returns the values of the fields names of hash key (false when absent).
local function hmget(key, names)
  local out = {}
  chunks(#names, function(i, j)
    local part = redis.call('HMGET', key, unpack(names, i, j))
    for k = 1, #part do out[#out + 1] = part[k] end
  end)
  return out
end
-- ratio formats a score of KEYS[5] so that it reads back as the same double.
local function ratio(a, b) return string.format('%.17g', a / b) end

local idx = math.floor(now / window)
local reset = window - (now - idx * window)

local h = redis.call('HMGET', KEYS[1], 'w', 't', 's', 'f', 'r', 'p', 'u', 'v')
local fresh = h[8] ~= '2'
local rolled = tonumber(h[1]) ~= idx
local recompute = fresh or tonumber(h[6]) ~= pool
local sumw, sumfair = tonumber(h[3]) or 0, tonumber(h[4]) or 0
local total, reserved, active_used = 0, 0, 0
if rolled then
  -- Nobody has used anything yet: every share is still to claim.
  reserved = sumfair
  if not dry then redis.call('DEL', KEYS[4], KEYS[5]) end
elseif not fresh then
  total, reserved, active_used = tonumber(h[2]), tonumber(h[5]), tonumber(h[7])
else
  total = tonumber(h[2]) or 0
end

-- cnt maps a weight to its number of active tenants; loaded when the shares are recomputed.
local cnt, cnt_changed = nil, false
local function counts()
  if not cnt then
    cnt = {}
    local l = redis.call('HGETALL', KEYS[6])
    for i = 1, #l, 2 do cnt[tonumber(l[i])] = tonumber(l[i + 1]) end
  end
  return cnt
end

-- Tenants idle for idle_ms leave the active set.
local cutoff = string.format('%d', now - idle)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
local left = {}
for _, name in ipairs(gone) do left[name] = true end
if #gone > 0 then
  recompute = true
  if not fresh then
    counts()
    cnt_changed = true
    local gw = hmget(KEYS[3], gone)
    local gu = {}
    if not rolled then gu = hmget(KEYS[4], gone) end
    for i = 1, #gone do
      local w = tonumber(gw[i])
      if w then cnt[w] = cnt[w] - 1 end
      active_used = active_used - (tonumber(gu[i]) or 0)
    end
  end
  if not dry then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
    chunks(#gone, function(i, j)
      redis.call('HDEL', KEYS[3], unpack(gone, i, j))
      if not rolled then redis.call('ZREM', KEYS[5], unpack(gone, i, j)) end
    end)
  end
end

-- The rebuild of a header of another layout: the counts, active_used and KEYS[5] from the
-- active tenants' weights and usage.
local fresh_w, fresh_used = {}, {}
if fresh then
  cnt, cnt_changed = {}, true
  local wl = redis.call('HGETALL', KEYS[3])
  for i = 1, #wl, 2 do
    if not left[wl[i]] then
      local w = tonumber(wl[i + 1])
      fresh_w[wl[i]] = w
      cnt[w] = (cnt[w] or 0) + 1
    end
  end
  if not rolled then
    local ul = redis.call('HGETALL', KEYS[4])
    for i = 1, #ul, 2 do
      local u = tonumber(ul[i + 1]) or 0
      if fresh_w[ul[i]] and u > 0 then
        fresh_used[ul[i]] = u
        active_used = active_used + u
      end
    end
  end
end

-- The tenant is active from now on; a new tenant or a new weight changes every fair share.
local oldw = nil
if not left[member] then oldw = tonumber(redis.call('HGET', KEYS[3], member)) end
local used = 0
if not rolled then used = tonumber(redis.call('HGET', KEYS[4], member)) or 0 end
local used_before = used
if oldw ~= weight then
  recompute = true
  counts()
  cnt_changed = true
  if oldw then
    cnt[oldw] = cnt[oldw] - 1
  else
    active_used = active_used + used
  end
  cnt[weight] = (cnt[weight] or 0) + 1
  if not dry then redis.call('HSET', KEYS[3], member, weight) end
end
if not dry then redis.call('ZADD', KEYS[2], string.format('%d', now), member) end

local fair, others
if recompute then
  counts()
  sumw, sumfair = 0, 0
  for w, n in pairs(cnt) do sumw = sumw + w * n end
  for w, n in pairs(cnt) do sumfair = sumfair + n * math.floor(pool * w / sumw) end
  fair = math.floor(pool * weight / sumw)
  -- What the other active tenants used beyond their shares.
  local excess = 0
  if fresh then
    for name, u in pairs(fresh_used) do
      if name ~= member then
        local g = u - math.floor(pool * fresh_w[name] / sumw)
        if g > 0 then excess = excess + g end
      end
    end
  elseif not rolled then
    local over = redis.call('ZRANGEBYSCORE', KEYS[5], '(' .. ratio(pool, sumw), '+inf')
    local names = {}
    for _, name in ipairs(over) do
      if name ~= member and not left[name] then names[#names + 1] = name end
    end
    local ws, us = hmget(KEYS[3], names), hmget(KEYS[4], names)
    for i = 1, #names do
      local w = tonumber(ws[i])
      if w then
        local g = (tonumber(us[i]) or 0) - math.floor(pool * w / sumw)
        if g > 0 then excess = excess + g end
      end
    end
  end
  others = sumfair - fair - (active_used - used) + excess
else
  fair = math.floor(pool * weight / sumw)
  local own = fair - used
  if own < 0 then own = 0 end
  -- What the other active tenants may still claim of their fair shares.
  others = reserved - own
end

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
local own = fair - used
if own < 0 then own = 0 end
reserved = others + own
active_used = active_used + used - used_before

local retry = 0
if not allowed and hits <= pool then retry = reset end
local remaining = math.max(fair - used, pool - total - others)
if remaining > pool - total then remaining = pool - total end
if remaining < 0 then remaining = 0 end
local reply = {allowed and 1 or 0, remaining, pool, reset, retry, shed and 1 or 0}
if dry then return reply end

redis.call('HSET', KEYS[1], 'w', string.format('%d', idx), 't', string.format('%d', total),
  's', string.format('%d', sumw), 'f', string.format('%d', sumfair),
  'r', string.format('%d', reserved), 'p', string.format('%d', pool),
  'u', string.format('%d', active_used), 'v', '2')
if used ~= used_before then
  if used > 0 then
    redis.call('HSET', KEYS[4], member, string.format('%d', used))
  else
    redis.call('HDEL', KEYS[4], member)
  end
end
if fresh then
  redis.call('DEL', KEYS[5])
  local z = {}
  for name, u in pairs(fresh_used) do
    if name ~= member then
      z[#z + 1] = ratio(u, fresh_w[name])
      z[#z + 1] = name
    end
  end
  chunks(#z, function(i, j) redis.call('ZADD', KEYS[5], unpack(z, i, j)) end)
end
if used > 0 and (used ~= used_before or oldw ~= weight or fresh) then
  redis.call('ZADD', KEYS[5], ratio(used, weight), member)
elseif used == 0 and used_before > 0 then
  redis.call('ZREM', KEYS[5], member)
end
if cnt_changed then
  local c = {}
  for w, n in pairs(cnt) do
    if n > 0 then
      c[#c + 1] = string.format('%d', w)
      c[#c + 1] = string.format('%d', n)
    end
  end
  redis.call('DEL', KEYS[6])
  redis.call('HSET', KEYS[6], unpack(c))
end
local ttl = math.max(reset, idle)
for i = 1, 6 do redis.call('PEXPIRE', KEYS[i], ttl) end
return reply
