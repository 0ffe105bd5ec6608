local t = redis.call('TIME')
-- fixed_window: one counter per epoch-aligned window of window_ms.
-- KEYS[1]: hash {w = window index, c = count}.
-- ARGV: limit, window_ms, burst (unused), hits, mode (0 normal, 1 count_rejected, 2 dry run).
-- Returns {allowed, remaining, limit, reset_after_ms, retry_after_ms}.
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local hits = tonumber(ARGV[4])
local count_rejected = ARGV[5] == '1'
-- A dry run computes the same reply as a normal call and writes nothing.
local dry = ARGV[5] == '2'
local max_count = 4503599627370496

local idx = math.floor(now / window)
local reset = window - (now - idx * window)
local s = redis.call('HMGET', KEYS[1], 'w', 'c')
local count = 0
if tonumber(s[1]) == idx then
  count = tonumber(s[2]) or 0
end

local after = count + hits
if after < 0 then after = 0 end
local allowed = after <= limit
if allowed or hits <= 0 or count_rejected then
  count = math.min(after, max_count)
end

local retry = 0
if not allowed and hits <= limit then retry = reset end
if dry then
elseif count > 0 then
  redis.call('HSET', KEYS[1], 'w', string.format('%d', idx), 'c', string.format('%d', count))
  redis.call('PEXPIRE', KEYS[1], reset)
elseif s[1] then
  redis.call('DEL', KEYS[1])
end
local remaining = limit - count
if remaining < 0 then remaining = 0 end
return {allowed and 1 or 0, remaining, limit, reset, retry}
