-- snapshot.lua: one record's snapshot, if it exists and is the owner's
-- (shared.records.snapshot_call).
--
-- KEYS[1]  the record (Keys.task(task_id))
--
-- ARGV[1]  owner check: the owner the record must have, or '' for any
--
-- Returns the snapshot (JSON text), or false (nil to redis-py) when there is no such record or
-- it is another owner's.
--!include snapshot_json.lua
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], '_owner') ~= ARGV[1] then return false end
return snapshot(KEYS[1])
