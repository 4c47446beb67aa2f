-- heartbeat.lua: a worker's heartbeat for a RUNNING task (shared.records.heartbeat_call).
--
-- Stamps _hb with the Redis server's clock, scores the task in the running set by it, keeps
-- the record alive for retention_s, and clears 'stalled' (bumping seq and publishing) if the
-- task had been marked stalled (stall.lua).
--
-- KEYS[1]  the record (Keys.task(task_id))
-- KEYS[2]  the running set (Keys.running)
-- KEYS[3]  the progress channel (Keys.progress_channel)
--
-- ARGV[1]  task id (its member name in the running set)
-- ARGV[2]  retention_s
--
-- Returns {code, cancel_flag}, code (shared.records.HeartbeatCode):
--    1 PUBLISHED    stamped, and 'stalled' cleared: seq moved and the update was published
--    2 STAMPED      stamped; nothing to publish
--    0 NOT_RUNNING  the task is not RUNNING; nothing changed
--   -1 MISSING      no such record
--!include publish.lua
--!include now.lua
local key, running, channel = KEYS[1], KEYS[2], KEYS[3]
local task_id, retention = ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', key) == 0 then return {-1, '0'} end
local cur = redis.call('HMGET', key, 'status', '_owner', '_cancel', 'stalled')
local cancel = cur[3] or '0'
if cur[1] ~= '"RUNNING"' then return {0, cancel} end
local t = now()
redis.call('HSET', key, '_hb', string.format('%.3f', t))
redis.call('ZADD', running, t, task_id)
redis.call('EXPIRE', key, retention)
if cur[4] ~= 'true' then return {2, cancel} end
redis.call('HSET', key, 'stalled', 'false')
redis.call('HINCRBY', key, 'seq', 1)
publish(channel, key, cur[2])
return {1, cancel}
