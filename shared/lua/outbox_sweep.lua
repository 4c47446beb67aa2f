-- outbox_sweep.lua: one sweep of one queue's outbox (gateway.broker.outbox.sweep_call): pushes
-- back the copies of messages the Redis broker lost in flight.
--
-- 1. A PENDING task whose message is older than every message left in its queue (the queue
--    drained past it, by margin_s) and at least min_age_s old, and is not in kombu's un-acked
--    hash, was lost: seen so on two sweeps confirm_s apart, its copy is pushed back at the
--    consuming end of its list. A task that started moves to the running index, its copy kept.
-- 2. A started task marked stalled whose message is not un-acked either has its copy pushed
--    back the same way (kombu's visibility timeout put it back, and a worker lost it again).
-- A task that ended, or whose record is gone, leaves the outbox. transition.lua already takes
-- out a task's copy when it ends; this is the safety net for tasks that ended by another path
-- (a record that expired, or was taken back) and for the publish-time entry of a task cancelled
-- while PENDING (kept until its queue drained past it).
--
-- KEYS[1]  the outbox hash (Keys.outbox): id -> list key, newline, envelope
-- KEYS[2]  the queue's publish-time index (Keys.outbox_times(queue))
-- KEYS[3]  kombu's un-acked hash (Keys.broker_unacked)
-- KEYS[4]  the strikes hash (Keys.outbox_strikes): id -> when first seen lost
-- KEYS[5]  the queue's started-task index (Keys.outbox_running(queue))
-- KEYS[6]  Keys.task_prefix: the record of an id read from KEYS[2] or KEYS[5] is KEYS[6] .. id
-- KEYS[7..16] the queue's lists, priority 0 to 9 (Keys.broker_queues(queue)); a copy names
--          one of them (a copy naming another list is never pushed back)
--
-- ARGV[1]  now
-- ARGV[2]  min_age_s
-- ARGV[3]  margin_s
-- ARGV[4]  confirm_s
-- ARGV[5]  limit: at most this many ids looked at per index
--
-- Returns the ids whose copy was pushed back (a list, maybe empty).
--!include terminal.lua
local outbox, at, unacked, strikes, running = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local task_prefix = KEYS[6]
local now, min_age, margin = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local confirm, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local lists, is_list = {}, {}
for i = 7, #KEYS do
  lists[#lists + 1] = KEYS[i]
  is_list[KEYS[i]] = true
end
local held = nil
local function is_held(id)
  if not held then held = redis.call('HVALS', unacked) end
  for _, m in ipairs(held) do
    if string.find(m, id, 1, true) then return true end
  end
  return false
end
local function drop(id)
  redis.call('HDEL', outbox, id)
  redis.call('ZREM', at, id)
  redis.call('ZREM', running, id)
  redis.call('HDEL', strikes, id)
end
-- A message in neither its queue nor kombu's un-acked set: on the second sighting at least
-- confirm_s after the first, its copy goes back to the consuming end of its queue.
local pushed = {}
local function strike(id)
  redis.call('HSETNX', strikes, id, ARGV[1])
  local first = tonumber(redis.call('HGET', strikes, id))
  local copy = redis.call('HGET', outbox, id)
  if copy and now - first >= confirm then
    local nl = string.find(copy, '\n', 1, true)
    local list = string.sub(copy, 1, nl - 1)
    if not is_list[list] then return false end
    redis.call('RPUSH', list, string.sub(copy, nl + 1))
    redis.call('HDEL', strikes, id)
    pushed[#pushed + 1] = id
    return true
  end
  return false
end
-- 1. PENDING tasks. How far the queue has drained: the publish time of the oldest message left
-- in any of its priority lists (the tail is consumed next). A tail we know nothing about: skip.
local frontier = math.huge
local known = true
for _, l in ipairs(lists) do
  local tail = redis.call('LINDEX', l, -1)
  if tail then
    local id = string.match(tail, '"id": ?"([%x%-]+)"')
    local s = id and redis.call('ZSCORE', at, id)
    if not s then known = false break end
    s = tonumber(s)
    if s < frontier then frontier = s end
  end
end
if known then
  local cutoff = math.min(now - min_age, frontier - margin)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', at, '-inf', cutoff, 'LIMIT', 0, limit)) do
    local status = redis.call('HGET', task_prefix .. id, 'status')
    if not status or TERMINAL[status] then
      drop(id)
    elseif status ~= '"PENDING"' then
      -- Started: from now on watched as a running task (2.), its copy kept until it ends.
      redis.call('ZREM', at, id)
      redis.call('ZADD', running, now, id)
      redis.call('HDEL', strikes, id)
    elseif is_held(id) then
      redis.call('HDEL', strikes, id)
    elseif strike(id) then
      redis.call('ZADD', at, now, id)
    end
  end
end
-- 2. Started tasks, oldest look first. One whose worker died is marked stalled (no heartbeat)
-- and its message is un-acked until kombu's visibility timeout puts it back in its queue. But
-- a message put back is taken with BRPOP like any other, and lost like any other by a worker
-- that dies before marking it un-acked: a stalled task whose message is not un-acked is
-- pushed back the same way. Each one looked at goes to the end of the line.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', running, '-inf', now - min_age,
                               'LIMIT', 0, limit)) do
  local cur = redis.call('HMGET', task_prefix .. id, 'status', 'stalled')
  if not cur[1] or TERMINAL[cur[1]] then
    drop(id)
  else
    redis.call('ZADD', running, now, id)
    if cur[2] ~= 'true' or is_held(id) then
      redis.call('HDEL', strikes, id)
    else
      strike(id)
    end
  end
end
return pushed
