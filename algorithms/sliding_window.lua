local t = redis.call('TIME')
-- sliding_window and priority: counts per sub-window ("bucket") of
-- bw = max(1, floor(window_ms / 20)) ms, epoch-aligned (bucket b covers [b * bw, (b + 1) * bw)).
-- A bucket counts while it intersects the sliding window: while now < (b + 1) * bw + window_ms.
-- Hits are admitted while the sum of the counted buckets plus the hits is at most the capacity:
-- the limit for sliding_window; for priority the request's class capacity,
-- floor(share * limit), computed by the caller, every class sharing the one count.
-- KEYS[1]: hash {bucket index (decimal) = count > 0}; any other field is stale and deleted.
-- ARGV: limit, window_ms, burst (unused), hits, mode (0 normal, 1 count_rejected, 2 dry run),
-- capacity (the limit, or a priority class's part of it).
-- Returns {allowed, remaining, capacity, reset_after_ms, retry_after_ms, shed}: shed is 1 when
-- refused while the whole limit still holds the hits (room kept for higher classes).
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local hits = tonumber(ARGV[4])
local count_rejected = ARGV[5] == '1'
-- A dry run computes the same reply as a normal call and writes nothing.
local dry = ARGV[5] == '2'
local cap = tonumber(ARGV[6])
local max_count = 4503599627370496

local bw = math.max(1, math.floor(window / 20))
local cur = math.floor(now / bw)
local oldest = 0
if now >= window then oldest = math.floor((now - window) / bw) end
local k = cur - oldest + 1
local c = {}
for i = 0, k - 1 do c[i] = 0 end

local f = redis.call('HGETALL', KEYS[1])
local del = {}
for i = 1, #f, 2 do
  local name = f[i]
  local b, n = nil, tonumber(f[i + 1])
  if #name <= 15 and (name == '0' or string.match(name, '^[1-9]%d*$')) then b = tonumber(name) end
  if b and b >= oldest and b <= cur and n and n > 0 then
    c[b - oldest] = n
  else
    del[#del + 1] = name
  end
end
local count = 0
for i = 0, k - 1 do count = count + c[i] end

local changed = {}
local allowed, shed
if hits > 0 then
  allowed = count + hits <= cap
  shed = not allowed and hits <= cap and count + hits <= limit
  if allowed or count_rejected then
    local add = math.min(hits, max_count - count)
    c[k - 1] = c[k - 1] + add
    count = count + add
    changed[#changed + 1] = k - 1
  end
else
  -- A refund comes off the newest buckets first, never below zero.
  local owed = -hits
  local i = k - 1
  while owed > 0 and i >= 0 do
    if c[i] > 0 then
      local take = math.min(c[i], owed)
      c[i] = c[i] - take
      owed = owed - take
      count = count - take
      changed[#changed + 1] = i
    end
    i = i - 1
  end
  allowed = count <= cap
  shed = not allowed and count <= limit
end

-- Exact: the buckets stop counting oldest first, bucket b at (b + 1) * bw + window_ms; the
-- class may go on once the count has fallen to cap - hits.
local retry = 0
if not allowed and hits <= cap then
  local need = count + math.max(hits, 0) - cap
  for i = 0, k - 1 do
    need = need - c[i]
    if need <= 0 then
      retry = (oldest + i + 1) * bw + window - now
      break
    end
  end
end

local reset = 0
for i = k - 1, 0, -1 do
  if c[i] > 0 then
    reset = (oldest + i + 1) * bw + window - now
    break
  end
end

if dry then
elseif count == 0 then
  if #f > 0 then redis.call('DEL', KEYS[1]) end
elseif #changed > 0 or #del > 0 then
  local set = {}
  for _, i in ipairs(changed) do
    local name = string.format('%d', oldest + i)
    if c[i] > 0 then
      set[#set + 1] = name
      set[#set + 1] = string.format('%d', c[i])
    else
      del[#del + 1] = name
    end
  end
  if #del > 0 then redis.call('HDEL', KEYS[1], unpack(del)) end
  if #set > 0 then redis.call('HSET', KEYS[1], unpack(set)) end
  redis.call('PEXPIRE', KEYS[1], reset)
end
local remaining = cap - count
if remaining < 0 then remaining = 0 end
return {allowed and 1 or 0, remaining, cap, reset, retry, shed and 1 or 0}
