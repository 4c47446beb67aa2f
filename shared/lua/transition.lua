-- transition.lua: one change of a task's record (shared.records.transition_call), atomically:
-- check, write, bump seq, keep the owner's active/ended sets and the running set, publish.
--
-- A terminal record never changes. Mode 'cancel' sets the cancel flag; only a PENDING task
-- then moves (to the status given). Mode 'progress' applies only to a RUNNING task and never
-- lowers its percent. A move to RUNNING stamps '_hb' and the running set (a start is a heartbeat). Any change clears
-- 'stalled'. Every record, terminal or not, expires
-- retention_s after its last change.
--
-- A task that ends leaves the outbox in the same step (gateway.broker.outbox): its copy, its
-- strikes and its started-task entry go. Its publish-time entry goes too, unless it ended
-- while PENDING (cancelled in its queue): its message may still wait there, and the sweep reads
-- the publish time of the message at a queue's tail as how far the queue drained (an unknown
-- tail stops the sweep of PENDING copies); the sweep drops that entry once the queue drained
-- past it. The queue is the record's 'queue' field. outbox_sweep.lua stays the safety net for
-- copies whose task ended by another path (its record expired or was taken back).
--
-- KEYS[1]  the record (Keys.task(task_id))
-- KEYS[2]  the running set (Keys.running)
-- KEYS[3]  the progress channel (Keys.progress_channel)
-- KEYS[4]  Keys.user_prefix: the owner is read from the record, so its sets are
--          KEYS[4] .. owner .. ':active' and KEYS[4] .. owner .. ':ended'
--          (Keys.user_active(owner), Keys.user_ended(owner))
-- KEYS[5]  the outbox hash (Keys.outbox)
-- KEYS[6]  the outbox strikes hash (Keys.outbox_strikes)
-- KEYS[7]  the outbox publish-time indexes' prefix: the queue is read from the record, so its
--          index is KEYS[7] .. queue (Keys.outbox_times(queue))
-- KEYS[8]  the outbox started-task indexes' prefix: KEYS[8] .. queue (Keys.outbox_running(queue))
--
-- ARGV[1]  task id (its member name in the sets)
-- ARGV[2]  retention_s
-- ARGV[3]  mode: 'status', 'progress' or 'cancel'
-- ARGV[4]  new status, JSON-encoded ('"RUNNING"'), or '' to keep it
-- ARGV[5]  percent ('' for none)
-- ARGV[6]  owner check: the owner the record must have, or '' for any
-- ARGV[7]  only if: comma list of JSON-encoded statuses the record must be in, or ''
-- ARGV[8]  now (when a terminal task ended: its score in the ended set)
-- ARGV[9]  runs before: apply only if the record's '_attempt' (runs started) is this number,
--          or '' for any (a start of a run: of two deliveries starting at once, one starts)
-- ARGV[10..] field, JSON value, field, JSON value, ...
--
-- Returns {code, seq, cancel_flag[, snapshot]}, code (shared.records.TransitionCode):
--    1 APPLIED           seq moved and the update was published (snapshot included)
--    0 ALREADY_TERMINAL  the record is terminal; nothing changed
--    2 SKIPPED           stale progress, not in an 'only if' status, or not at 'runs before'
--    3 CANCEL_FLAGGED    the cancel flag was set; the task is past PENDING, so it did not move
--   -1 MISSING           no such record, or not the owner's
--!include publish.lua
--!include terminal.lua
--!include now.lua
local key, running, channel, user_prefix = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local outbox, strikes, times_prefix, started_prefix = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local task_id, retention, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local new_status, percent, owner_check = ARGV[4], ARGV[5], ARGV[6]
local only_if, ended_at, runs_before = ARGV[7], tonumber(ARGV[8]), ARGV[9]
if redis.call('EXISTS', key) == 0 then return {-1, 0, '0'} end
local cur = redis.call('HMGET', key, 'status', '_owner', '_pct', '_cancel', 'seq')
local status, owner = cur[1], cur[2]
local pct = tonumber(cur[3]) or 0
local cancel = cur[4] or '0'
local seq = tonumber(cur[5]) or 0
if owner_check ~= '' and owner ~= owner_check then return {-1, 0, '0'} end
if TERMINAL[status] then return {0, seq, cancel} end
if mode == 'cancel' then
  redis.call('HSET', key, '_cancel', '1')
  cancel = '1'
  if status ~= '"PENDING"' then return {3, seq, cancel} end
elseif mode == 'progress' then
  if status ~= '"RUNNING"' then return {2, seq, cancel} end
  local p = tonumber(percent)
  if p < pct then return {2, seq, cancel} end
  redis.call('HSET', key, '_pct', percent)
end
if only_if ~= '' then
  local ok = false
  for s in string.gmatch(only_if, '[^,]+') do
    if s == status then ok = true end
  end
  if not ok then return {2, seq, cancel} end
end
if runs_before ~= '' then
  local runs = tonumber(redis.call('HGET', key, '_attempt')) or 0
  if runs ~= tonumber(runs_before) then return {2, seq, cancel} end
end
if mode ~= 'progress' and percent ~= '' then redis.call('HSET', key, '_pct', percent) end
for i = 10, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
end
if new_status ~= '' then redis.call('HSET', key, 'status', new_status) end
-- A run that starts is alive: its first heartbeat is the start itself (by the Redis clock, as
-- heartbeat.lua stamps it, and into the running set the stall watch reads), so another delivery
-- never finds it RUNNING with no sign of life, and one killed before its next beat is found.
if new_status == '"RUNNING"' then
  local started = now()
  redis.call('HSET', key, '_hb', string.format('%.3f', started))
  redis.call('ZADD', running, started, task_id)
end
-- The task moved: it is not stalled (any more).
if redis.call('HGET', key, 'stalled') == 'true' then redis.call('HSET', key, 'stalled', 'false') end
seq = redis.call('HINCRBY', key, 'seq', 1)
if new_status ~= '' and TERMINAL[new_status] then
  redis.call('ZREM', user_prefix .. owner .. ':active', task_id)
  redis.call('ZADD', user_prefix .. owner .. ':ended', ended_at, task_id)
  redis.call('ZREM', running, task_id)
  redis.call('HDEL', outbox, task_id)
  redis.call('HDEL', strikes, task_id)
  local raw = redis.call('HGET', key, 'queue')
  local ok, queue = false, nil
  if raw then ok, queue = pcall(cjson.decode, raw) end
  if ok and type(queue) == 'string' then
    redis.call('ZREM', started_prefix .. queue, task_id)
    if status ~= '"PENDING"' then redis.call('ZREM', times_prefix .. queue, task_id) end
  end
end
-- Every record, terminal or not, lives retention seconds after its last change.
redis.call('EXPIRE', key, retention)
local snap = publish(channel, key, owner)
return {1, seq, cancel, snap}
