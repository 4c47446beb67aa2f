-- stall.lua: marks every RUNNING task whose last heartbeat is older than stale_after_s as
-- stalled (shared.records.stall_call; run by every gateway, idempotent).
--
-- A marked task gets 'stalled' = true, seq bumped and its update published, and is re-scored
-- retention_s ahead in the running set (its next heartbeat brings it back, heartbeat.lua).
-- Ids whose task is no longer RUNNING leave the set.
--
-- KEYS[1]  the running set (Keys.running)
-- KEYS[2]  Keys.task_prefix: the record of an id read from KEYS[1] is KEYS[2] .. id
-- KEYS[3]  the progress channel (Keys.progress_channel)
--
-- ARGV[1]  stale_after_s
-- ARGV[2]  retention_s
-- ARGV[3]  limit: at most this many ids looked at
--
-- Returns the ids newly marked stalled (a list, maybe empty).
--!include publish.lua
--!include now.lua
local running, task_prefix, channel = KEYS[1], KEYS[2], KEYS[3]
local stale_after, retention, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = now()
local marked = {}
local ids = redis.call('ZRANGEBYSCORE', running, '-inf', t - stale_after, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  local key = task_prefix .. id
  local cur = redis.call('HMGET', key, 'status', '_owner', '_hb', 'stalled')
  if cur[1] ~= '"RUNNING"' then
    redis.call('ZREM', running, id)
  else
    local hb = tonumber(cur[3])
    if cur[4] ~= 'true' and (not hb or hb < t - stale_after) then
      redis.call('HSET', key, 'stalled', 'true')
      redis.call('HINCRBY', key, 'seq', 1)
      publish(channel, key, cur[2])
      marked[#marked + 1] = id
    end
    redis.call('ZADD', running, t + retention, id)
  end
end
return marked
