-- create.lua: a new PENDING record (seq 1), indexed in its owner's sets, unless the id exists
-- or the owner is at max_active (shared.records.create_call).
--
-- _pct and _cancel start absent (their readers take that as 0). The quota rule and the trim
-- of the owner's indexes are quota.lua's, shared with create_batch.lua: ids of the active set
-- whose record is gone (expired unfinished) are dropped before a refusal; the owner's tasks and
-- ended sets lose the ids older than retention_s (beat's taskgate.sweep does the rest).
--
-- KEYS[1]  the record (Keys.task(task_id))
-- KEYS[2]  the owner's tasks (Keys.user_tasks(owner))
-- KEYS[3]  the owner's active tasks (Keys.user_active(owner))
-- KEYS[4]  the owner's ended tasks (Keys.user_ended(owner))
-- KEYS[5]  Keys.task_prefix: the record of an id read from KEYS[3] is KEYS[5] .. id
--
-- ARGV[1]  task id
-- ARGV[2]  owner (raw user id, stored as _owner)
-- ARGV[3]  created_at (the score in KEYS[2] and KEYS[3])
-- ARGV[4]  max_active (0: no limit)
-- ARGV[5]  retention_s
-- ARGV[6..] field, JSON value, field, JSON value, ...
--
-- Returns {code, payload}, code (shared.records.CreateCode):
--    1 CREATED    payload: the snapshot (JSON)
--   -2 EXISTS     the id exists; payload ''
--   -3 AT_QUOTA   the owner has max_active tasks not ended; payload: how many
--!include snapshot_json.lua
--!include quota.lua
local key, tasks_key, active_key, ended_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local task_prefix = KEYS[5]
local task_id, owner, created = ARGV[1], ARGV[2], tonumber(ARGV[3])
local max_active, retention = tonumber(ARGV[4]), tonumber(ARGV[5])
if redis.call('EXISTS', key) == 1 then return {-2, ''} end
if max_active > 0 then
  local room = active_room(active_key, task_prefix, max_active, 1)
  if room <= 0 then return {-3, tostring(max_active - room)} end
end
-- One HSET of every field; _pct and _cancel start absent: their readers take that as 0.
-- Arguments go to redis.call as text: Redis would turn each Lua number into text with snprintf.
local hs = {}
for i = 6, #ARGV do hs[#hs + 1] = ARGV[i] end
hs[#hs + 1] = '_owner'
hs[#hs + 1] = owner
hs[#hs + 1] = 'seq'
hs[#hs + 1] = '1'
redis.call('HSET', key, unpack(hs))
redis.call('EXPIRE', key, string.format('%.17g', retention))
local created_s = string.format('%.17g', created)
redis.call('ZADD', tasks_key, created_s, task_id)
redis.call('ZADD', active_key, created_s, task_id)
trim_indexes(tasks_key, ended_key, created, retention)
return {1, snapshot(key)}
