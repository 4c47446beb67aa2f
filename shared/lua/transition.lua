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
-- KEYS[9]  (only with ARGV[10]) Celery's own result key of the task (its backend's
--          get_key_for_task: 'celery-task-meta-<id>')
--
-- ARGV[1]  task id (its member name in the sets)
-- ARGV[2]  retention_s
-- ARGV[3]  mode: 'status', 'progress' or 'cancel'
-- ARGV[4]  new status, JSON-encoded ('"RUNNING"'), or '' to keep it
-- ARGV[5]  percent ('' for none)
-- ARGV[6]  owner check: the owner the record must have, or '' for any
-- ARGV[7]  only if: comma list of JSON-encoded statuses the record must be in, or ''
-- ARGV[8]  now (when a terminal task ended: its score in the ended set)
-- ARGV[9]  guard: '' for none, or
--          'start:<attempt>:<stale_after_s>:<max_runs>' for the start of a run (a move to
--          RUNNING, shared.records.StartGuard): refused with RETRIED if the record's 'attempt'
--          is past <attempt> (this delivery's attempt already ended in a retry), LIVE while
--          another run is RUNNING and beat less than <stale_after_s> ago by the Redis clock
--          (its age in seconds as the 4th reply), WORKER_LOST once <max_runs> runs started and
--          none ended (their count as the 4th reply); else the run is counted ('_attempt' + 1)
--          as it starts: of two deliveries starting at once, one starts, and the other finds it
--          LIVE. One round trip where a start used to read the heartbeat, the clock and the run
--          count first.
--          'complete' for a COMPLETED end: if a cancel was asked the task ends CANCELLED
--          instead (only 'finished_at' of the fields is written), code CANCELLED_INSTEAD.
-- ARGV[10] Celery's result meta, encoded as its backend encodes it (worker/celery_result.py),
--          or '': with a COMPLETED end that applied (not CANCELLED_INSTEAD) it is SET on
--          KEYS[9] (with EX ARGV[11] when that is above 0) and PUBLISHed on KEYS[9], as
--          celery.backends.redis.RedisBackend._set writes a result; the worker then tells
--          Celery not to store it again. One script run where Celery's store is a GET and a
--          SETEX + PUBLISH.
-- ARGV[11] that result's expiry in seconds ('' or 0: none)
-- ARGV[12..] field, JSON value, field, JSON value, ...
--
-- Returns {code, seq, cancel_flag[, snapshot[, runs started, with a start guard]]}, code
-- (shared.records.TransitionCode):
--    1 APPLIED           seq moved and the update was published (snapshot included)
--    0 ALREADY_TERMINAL  the record is terminal; nothing changed
--    2 SKIPPED           stale progress, or not in an 'only if' status
--    3 CANCEL_FLAGGED    the cancel flag was set; the task is past PENDING, so it did not move
--   -1 MISSING           no such record, or not the owner's
--    4 RETRIED           (start guard) this delivery's attempt already ended in a retry
--    5 LIVE              (start guard) another run is alive; the 4th reply is its heartbeat age
--    6 WORKER_LOST       (start guard) max_runs runs started and died; the 4th reply is the count
--    7 CANCELLED_INSTEAD ('complete' guard) a cancel was asked: the task ended CANCELLED
--!include publish.lua
--!include terminal.lua
--!include now.lua
local key, running, channel, user_prefix = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local outbox, strikes, times_prefix, started_prefix = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local task_id, retention, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local new_status, percent, owner_check = ARGV[4], ARGV[5], ARGV[6]
local only_if, ended_at, guard = ARGV[7], tonumber(ARGV[8]), ARGV[9]
local celery_meta, celery_expires = ARGV[10], tonumber(ARGV[11]) or 0
local FIELDS = 12
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
local runs_started = nil
if string.sub(guard, 1, 6) == 'start:' then
  local attempt, stale_after, max_runs = string.match(guard, '^start:(%d+):([%d.]+):(%d+)$')
  local rec = redis.call('HMGET', key, 'attempt', '_hb', '_attempt')
  local at = tonumber(rec[1])
  if at and at > tonumber(attempt) then return {4, seq, cancel} end
  if status == '"RUNNING"' and rec[2] then
    local age = now() - tonumber(rec[2])
    if age < tonumber(stale_after) then return {5, seq, cancel, string.format('%.3f', age)} end
  end
  local runs = tonumber(rec[3]) or 0
  if runs >= tonumber(max_runs) then return {6, seq, cancel, tostring(runs)} end
  runs_started = runs + 1
end
local code = 1
if guard == 'complete' and cancel == '1' then
  -- The task was cancelled while it ran and finished before it saw the cancel: it ends
  -- CANCELLED, its result not kept (as a run that saw the cancel ends).
  code = 7
  new_status = '"CANCELLED"'
  for i = FIELDS, #ARGV, 2 do
    if ARGV[i] == 'finished_at' then redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
  end
else
  if mode ~= 'progress' and percent ~= '' then redis.call('HSET', key, '_pct', percent) end
  for i = FIELDS, #ARGV, 2 do
    redis.call('HSET', key, ARGV[i], ARGV[i + 1])
  end
end
if runs_started then redis.call('HSET', key, '_attempt', runs_started) end
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
if code == 1 and new_status == '"COMPLETED"' and celery_meta ~= '' then
  if celery_expires > 0 then
    redis.call('SET', KEYS[9], celery_meta, 'EX', celery_expires)
  else
    redis.call('SET', KEYS[9], celery_meta)
  end
  redis.call('PUBLISH', KEYS[9], celery_meta)
end
-- Every record, terminal or not, lives retention seconds after its last change.
redis.call('EXPIRE', key, retention)
local snap = publish(channel, key, owner)
if runs_started then return {code, seq, cancel, snap, runs_started} end
return {code, seq, cancel, snap}
