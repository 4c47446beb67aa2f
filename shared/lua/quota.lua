-- quota.lua (fragment): the owner's quota rule and index trim, the same for create.lua (one
-- record) and create_batch.lua (a run of records).
--
-- The rule: an owner has at most max_active records not ended (the active set). A record that
-- never ended expires too (or was taken back), and its id would hold a place for good: so when
-- a run needs more room than the active set leaves, the ids whose record is gone are dropped
-- first, then the room is counted again. On create, the owner's tasks and ended sets lose the
-- ids older than retention_s (beat's taskgate.sweep does the rest).
--
-- KEYS: none of its own; the callers pass their KEYS entries for Keys.user_active(owner),
-- Keys.user_tasks(owner), Keys.user_ended(owner) and Keys.task_prefix.
-- ARGV: none.
-- Defines: active_room(active_key, task_prefix, max_active, wanted) -> how many records the
-- owner may still create (max_active minus the active ids whose record exists, once pruned;
-- <= 0: none), pruning only when fewer than wanted are left; call it with max_active > 0.
-- trim_indexes(tasks_key, ended_key, now, retention) -> nothing.
local function active_room(active_key, task_prefix, max_active, wanted)
  local room = max_active - redis.call('ZCARD', active_key)
  if room >= wanted then return room end
  for _, id in ipairs(redis.call('ZRANGE', active_key, 0, -1)) do
    if redis.call('EXISTS', task_prefix .. id) == 0 then
      redis.call('ZREM', active_key, id)
    end
  end
  return max_active - redis.call('ZCARD', active_key)
end
local function trim_indexes(tasks_key, ended_key, now, retention)
  redis.call('ZREMRANGEBYSCORE', tasks_key, '-inf', now - retention)
  redis.call('ZREMRANGEBYSCORE', ended_key, '-inf', now - retention)
end
