local t = redis.call('TIME')
-- sliding_window: the previous window's count, weighted by the share of it still inside the
-- sliding window, plus the current window's count. Windows are epoch-aligned, window_ms long.
-- A window's count is assumed spread evenly from the offset of its first charged hit to its
-- end, and a window may not take a hit that would make that assumption an underestimate.
-- KEYS[1]: hash {w = window index, c = current count, fc = offset of the current window's
-- first charged hit, cm = cap on the current count, p = previous count, fp = offset of the
-- previous window's first charged hit}.
-- ARGV: limit, window_ms, burst (unused), hits, count_rejected (0/1).
-- Returns {allowed, remaining, limit, reset_after_ms, retry_after_ms}.
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local hits = tonumber(ARGV[4])
local count_rejected = ARGV[5] == '1'
-- Counts saturate so that (count + 1) * window_ms stays below 2^53 (exact in a Lua number).
local max_count = math.floor(4503599627370496 / window)

local idx = math.floor(now / window)
local e = now - idx * window
local s = redis.call('HMGET', KEYS[1], 'w', 'c', 'fc', 'cm', 'p', 'fp')
local cur, fc, cm, prev, fp = 0, 0, max_count, 0, 0
local w = tonumber(s[1])
if w == idx then
  cur = tonumber(s[2]) or 0
  fc = tonumber(s[3]) or 0
  cm = tonumber(s[4]) or max_count
  prev = tonumber(s[5]) or 0
  fp = tonumber(s[6]) or 0
elseif w == idx - 1 then
  prev = tonumber(s[2]) or 0
  fp = tonumber(s[3]) or 0
end
-- Offsets from another window length (a changed limit) are clamped into this one.
fc = math.min(math.max(fc, 0), window - 1)
fp = math.min(math.max(fp, 0), window - 1)

-- The previous count still inside the sliding window at offset x, rounded up.
local function weighted(n, x)
  return math.ceil(n * (window - math.max(x, fp)) / (window - fp))
end

-- The cap: the hits before offset e (all cur of them) must be at least
-- floor(final * (e - fc) / (window - fc)), so that the next window's estimate of this one is
-- never below the truth.
if cur > 0 and e > fc then
  cm = math.min(cm, math.floor(((cur + 1) * (window - fc) - 1) / (e - fc)))
end
local nc, np = cur + hits, prev
if nc < 0 then
  np = math.max(0, prev + nc)
  nc = 0
end
local allowed = weighted(np, e) + nc <= limit and not (hits > 0 and cur > 0 and nc > cm)
if allowed or hits <= 0 or count_rejected then
  if cur == 0 and nc > 0 then
    fc, cm = e, max_count
  end
  cur = math.min(nc, max_count)
  prev = np
end

local retry = 0
if not allowed and hits <= limit then
  local h = math.max(hits, 0)
  local r = limit - cur - h
  local x = window
  if r >= 0 then
    -- Later in this window, once the previous count has decayed to r, if the cap allows.
    x = e
    if prev > r then x = math.max(e, window - math.floor(r * (window - fp) / prev)) end
    if h > 0 and cur > 0 and (cur + h > cm or
        (x > fc and cur + h > math.floor(((cur + 1) * (window - fc) - 1) / (x - fc)))) then
      x = window
    end
  end
  if x < window then
    retry = x - e
  else
    -- In the next window, where cur becomes the previous count, spread from fc.
    local e2 = 0
    if cur > limit - h then e2 = window - math.floor((limit - h) * (window - fc) / cur) end
    retry = window - e + e2
  end
end

local reset = 0
if cur > 0 then
  reset = 2 * window - e
elseif prev > 0 then
  reset = window - e
end
if cur == 0 then
  fc, cm = 0, 0
end
if reset > 0 then
  redis.call('HSET', KEYS[1], 'w', string.format('%d', idx), 'c', string.format('%d', cur),
    'fc', string.format('%d', fc), 'cm', string.format('%d', cm),
    'p', string.format('%d', prev), 'fp', string.format('%d', fp))
  redis.call('PEXPIRE', KEYS[1], 2 * window)
elseif s[1] then
  redis.call('DEL', KEYS[1])
end
local remaining = limit - cur - weighted(prev, e)
if cur > 0 then remaining = math.min(remaining, cm - cur) end
if remaining < 0 then remaining = 0 end
return {allowed and 1 or 0, remaining, limit, reset, retry}
