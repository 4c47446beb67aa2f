-- annotate.lua: sets one annotation field (such as 'webhook') of a record, terminal or not,
-- without touching its status; bumps seq and publishes the update, like a transition
-- (shared.records.annotate_call).
--
-- A compare-and-set: with an 'expect', the field must hold exactly that, so two deliverers of
-- one webhook cannot overwrite each other's result.
--
-- KEYS[1]  the record (Keys.task(task_id))
-- KEYS[2]  the progress channel (Keys.progress_channel)
--
-- ARGV[1]  field
-- ARGV[2]  value (JSON)
-- ARGV[3]  expect: the field's current JSON, or '' for no condition
--
-- Returns {code, seq, snapshot}, code (shared.records.AnnotateCode):
--    1 APPLIED    written, seq moved, update published (snapshot included)
--    2 CONFLICT   the field did not hold 'expect'; nothing changed (seq 0, snapshot '')
--   -1 MISSING    no such record (seq 0, snapshot '')
--!include publish.lua
local key, channel = KEYS[1], KEYS[2]
local field, value, expect = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', key) == 0 then return {-1, 0, ''} end
if expect ~= '' and redis.call('HGET', key, field) ~= expect then return {2, 0, ''} end
redis.call('HSET', key, field, value)
local seq = redis.call('HINCRBY', key, 'seq', 1)
local snap = publish(channel, key, redis.call('HGET', key, '_owner'))
return {1, seq, snap}
