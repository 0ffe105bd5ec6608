local t = redis.call('TIME')
-- concurrency: at most `limit` leases hold a slot at once; a lease frees its slot when it is
-- released or when its ttl ends, whichever comes first.
-- KEYS[1]: sorted set {lease id: expiry, Unix ms}; a lease is live while now < expiry.
-- ARGV: limit (slots), ttl_ms, burst (unused), hits (1 acquire, 0 check, -1 release),
--       mode (2: dry run, decide and write nothing; else unused),
--       lease id (a decimal string, used as is, never as a number).
-- Returns {allowed, remaining, limit, reset_after_ms, retry_after_ms}.
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local hits = tonumber(ARGV[4])
local dry = ARGV[5] == '2'
local lease = ARGV[6]
local key = KEYS[1]
local after_now = string.format('(%d', now)

-- The decision, from reads only.
local live = redis.call('ZCOUNT', key, after_now, '+inf')
local held = false
if hits ~= 0 then
  local s = redis.call('ZSCORE', key, lease)
  held = s ~= false and tonumber(s) > now
end
local allowed
if hits > 0 then
  -- A lease that already holds a slot here is renewed.
  allowed = held or live + 1 <= limit
elseif hits < 0 then
  allowed = held
else
  allowed = live + 1 <= limit
end
local changed = allowed and hits ~= 0
local after = live
if changed and hits > 0 and not held then after = live + 1 end
if changed and hits < 0 then after = live - 1 end

-- The latest expiry once decided: of the other leases, and of this one if it was taken.
local last = 0
if live > 0 then
  local top = redis.call('ZREVRANGEBYSCORE', key, '+inf', after_now, 'WITHSCORES', 'LIMIT', 0, 2)
  for i = 1, #top, 2 do
    if not (changed and top[i] == lease) then
      last = tonumber(top[i + 1])
      break
    end
  end
end
if changed and hits > 0 then last = math.max(last, now + ttl) end
local reset, retry = 0, 0
if last > now then reset = last - now end
if not allowed and hits >= 0 then
  local first = redis.call('ZRANGEBYSCORE', key, after_now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  retry = tonumber(first[2]) - now
end

if hits ~= 0 and not dry then
  -- Expired leases free their slots.
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now))
  if changed and hits > 0 then
    redis.call('ZADD', key, string.format('%d', now + ttl), lease)
  elseif changed then
    redis.call('ZREM', key, lease)
  end
  if after > 0 then redis.call('PEXPIRE', key, reset) end
end
local remaining = limit - after
if remaining < 0 then remaining = 0 end
return {allowed and 1 or 0, remaining, limit, reset, retry}
