local t = redis.call('TIME')
-- sliding_window: the previous window's count, weighted by the share of it still inside the
-- sliding window, plus the current window's count. Windows are epoch-aligned, window_ms long.
-- KEYS[1]: hash {w = window index, c = current count, p = previous count}.
-- ARGV: limit, window_ms, burst (unused), hits, count_rejected (0/1).
-- Returns {allowed, remaining, limit, reset_after_ms, retry_after_ms}.
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local hits = tonumber(ARGV[4])
local count_rejected = ARGV[5] == '1'
-- Counts saturate so that count * window_ms stays below 2^53 (exact in a Lua number).
local max_count = math.floor(4503599627370496 / window)

local idx = math.floor(now / window)
local e = now - idx * window
local s = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local cur, prev = 0, 0
local w = tonumber(s[1])
if w == idx then
  cur = tonumber(s[2]) or 0
  prev = tonumber(s[3]) or 0
elseif w == idx - 1 then
  prev = tonumber(s[2]) or 0
end

-- The estimate is prev * (window - e) / window + cur, rounded up: refuse rather than overshoot.
local nc, np = cur + hits, prev
if nc < 0 then
  np = math.max(0, prev + nc)
  nc = 0
end
local allowed = math.ceil(np * (window - e) / window) + nc <= limit
if allowed or hits <= 0 or count_rejected then
  cur = math.min(nc, max_count)
  prev = np
end

local retry = 0
if not allowed and hits <= limit then
  local h = math.max(hits, 0)
  local r = limit - cur - h
  local f = 0
  if r >= 0 and prev > 0 then f = math.floor(r * window / prev) end
  if f > 0 then
    -- Later in this window, once prev * (window - e) <= r * window.
    retry = window - f - e
  else
    -- In the next window, where cur becomes the previous count.
    local e2 = 0
    if cur > 0 then e2 = math.max(0, window - math.floor((limit - h) * window / cur)) end
    retry = window - e + e2
  end
end

local reset = 0
if cur > 0 then
  reset = 2 * window - e
elseif prev > 0 then
  reset = window - e
end
if reset > 0 then
  redis.call('HSET', KEYS[1], 'w', string.format('%d', idx), 'c', string.format('%d', cur),
    'p', string.format('%d', prev))
  redis.call('PEXPIRE', KEYS[1], 2 * window)
elseif s[1] then
  redis.call('DEL', KEYS[1])
end
local remaining = limit - cur - math.ceil(prev * (window - e) / window)
if remaining < 0 then remaining = 0 end
return {allowed and 1 or 0, remaining, limit, reset, retry}
