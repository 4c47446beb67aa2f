-- submit_bucket.lua: takes submits from a user's token bucket, refilled by the Redis server's
-- clock (gateway.tasks.ratelimit.bucket_call).
--
-- The bucket holds capacity tokens at most and refills at rate per second. A take of cost
-- tokens is all or none, or, partial, as many whole tokens as there are (up to cost). A take
-- of nothing changes nothing. The bucket expires once it would be full again (plus a second).
--
-- KEYS[1]  the bucket (Keys.submit_bucket(user)): hash of tokens and ts (microseconds)
--
-- ARGV[1]  rate: tokens per second
-- ARGV[2]  capacity
-- ARGV[3]  cost: tokens asked
-- ARGV[4]  partial: '1' to take as many whole tokens as there are, up to cost; '0' all or none
--
-- Returns {taken, wait_ms}: taken is cost or 0 (partial: what was granted); wait_ms is how long
-- until the tokens not granted are back (0 when all were).
local rate, capacity, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local partial = ARGV[4] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cur = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(cur[1]), tonumber(cur[2])
if tokens == nil or ts == nil then
  tokens, ts = capacity, now
end
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * rate / 1000000)
end
local ttl = math.ceil(capacity / rate * 1000) + 1000
local take = cost
if tokens < cost then
  if not partial then return {0, math.ceil((cost - tokens) / rate * 1000)} end
  take = math.floor(tokens)
end
if take > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - take), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {take, math.max(0, math.ceil((cost - tokens) / rate * 1000))}
