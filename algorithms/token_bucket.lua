local t = redis.call('TIME')
-- token_bucket: GCRA. The state is the theoretical arrival time (TAT) in microseconds.
-- KEYS[1]: string, the TAT.
-- ARGV: limit (tokens per window), window_ms, burst (capacity), hits, mode (0 normal, 1 count_rejected, 2 dry run).
-- Returns {allowed, remaining, burst, reset_after_ms, retry_after_ms}.
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2]) * 1000
local burst = tonumber(ARGV[3])
local hits = tonumber(ARGV[4])
local count_rejected = ARGV[5] == '1'
-- A dry run computes the same reply as a normal call and writes nothing.
local dry = ARGV[5] == '2'

local interval = math.ceil(window / limit)
local tau = interval * burst
local stored = redis.call('GET', KEYS[1])
local tat = tonumber(stored) or now
if tat < now then tat = now end

local new
if hits >= 0 then
  new = tat + math.min(hits, 2 * burst) * interval
else
  new = math.max(now, tat + math.max(hits, -burst) * interval)
end
local allowed = new - now <= tau
if allowed or hits <= 0 or count_rejected then
  -- Charged refusals may put the bucket in debt, never by more than one burst.
  tat = math.min(new, now + 2 * tau)
end

local retry = 0
if not allowed and hits <= burst then
  retry = math.ceil((tat + math.max(hits, 0) * interval - tau - now) / 1000)
end
local reset = math.ceil((tat - now) / 1000)
if dry then
elseif tat > now then
  redis.call('SET', KEYS[1], string.format('%d', tat))
  redis.call('PEXPIRE', KEYS[1], reset)
elseif stored then
  redis.call('DEL', KEYS[1])
end
local remaining = 0
if tau - (tat - now) > 0 then remaining = math.floor((tau - (tat - now)) / interval) end
return {allowed and 1 or 0, remaining, burst, reset, retry}
