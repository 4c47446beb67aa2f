-- create_batch.lua: up to CHUNK new PENDING records of one owner in one run
-- (shared.records_batch.BatchRecords.create_args), by create.lua's rules: a record that
-- exists is not overwritten, and the owner's max_active quota is checked (here once for the
-- run, then counted down). The quota rule and the trim are quota.lua's, as in create.lua: when
-- the run wants more room than the active set leaves, the ids whose record is gone (expired
-- unfinished) are dropped first; a run that created a record trims the owner's tasks and
-- ended sets of the ids older than retention_s.
--
-- With the broker part (the Redis broker on the records' Redis), each created record's
-- message is pushed, its outbox copy kept and its PENDING snapshot published (one message for
-- the run, in the records' order) in the same atomic run: a task is accepted entirely or not
-- at all, and no worker can report on it before its PENDING update is out.
--
-- Redis's time per record is what bounds a large batch, so the loop allocates little: one HSET
-- argument table for the whole run, its per-record values overwritten in place. A record holds
-- no field that reads the same absent: no nulls (snapshot_json.lua reads a missing field as
-- null; the caller leaves out a varying field null in every record of the run), no _pct or
-- _cancel of 0 (as in create.lua). Every argument handed to redis.call per record is a string:
-- Redis turns a Lua number into text with snprintf on each call, which was a tenth of the
-- run's instructions (seq, the expiry and two index scores per record); the numbers are
-- turned into text once per run here, with the format Redis uses ('%.17g').
--
-- KEYS[1]  the owner's tasks (Keys.user_tasks(owner))
-- KEYS[2]  the owner's active tasks (Keys.user_active(owner))
-- KEYS[3]  Keys.task_prefix: a record is KEYS[3] .. its task id
-- KEYS[4]  the progress channel (Keys.progress_channel; used with the broker part)
-- KEYS[5]  the outbox hash (Keys.outbox; used with the broker part)
-- KEYS[6]  the owner's ended tasks (Keys.user_ended(owner))
-- KEYS[7..] the broker lists (Keys.broker_queues) and outbox time indexes (Keys.outbox_times)
--          the records' broker parts name, each once; a record names them by index
--
-- ARGV[1]  owner
-- ARGV[2]  created_at (the score in KEYS[1] and KEYS[2])
-- ARGV[3]  max_active (0: no limit)
-- ARGV[4]  retention_s
-- ARGV[5]  nc: how many fields every record shares, then nc name, JSON value pairs
-- then     nv: how many fields vary per record, then their nv names
-- then     the broker part: '0' (none), or '1', the publish time (the score in the outbox time
--          indexes) and the head of the update message (shared.records.updates_head)
-- then per record: its task id, its nv JSON values and, with the broker part, the KEYS
--          index of its list, its message envelope, the KEYS index of its outbox time index and
--          its PENDING snapshot (JSON)
--
-- Returns one code per record (shared.records.CreateCode): 1 CREATED, -2 EXISTS (the id
-- exists), -3 AT_QUOTA (over max_active).
--!include quota.lua
local tasks_key, active_key, task_prefix = KEYS[1], KEYS[2], KEYS[3]
local channel, outbox, ended_key = KEYS[4], KEYS[5], KEYS[6]
local owner, created = ARGV[1], tonumber(ARGV[2])
local max_active, retention, nc = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
-- As text once (see above): the scores in the owner's indexes and the expiry.
local created_s, retention_s = string.format('%.17g', created), string.format('%.17g', retention)
local hs = {'_owner', owner, 'seq', '1'}
for i = 0, nc - 1 do
  hs[#hs + 1] = ARGV[6 + 2 * i]
  hs[#hs + 1] = ARGV[7 + 2 * i]
end
local at = 6 + 2 * nc
local nv = tonumber(ARGV[at])
local slot = #hs
for i = 1, nv do
  hs[slot + 2 * i - 1] = ARGV[at + i]
  hs[slot + 2 * i] = ''
end
at = at + nv + 1
local inline = ARGV[at] == '1'
local now, head = ARGV[at + 1], ARGV[at + 2]
at = at + (inline and 3 or 1)
local per = 1 + nv + (inline and 4 or 0)
local copies, pushes, lists, stamps, pending = {}, {}, {}, {}, {}
local room = 0
if max_active > 0 then
  room = active_room(active_key, task_prefix, max_active, (#ARGV - at + 1) / per)
end
local codes = {}
local r = 0
local members = {}
while at <= #ARGV do
  r = r + 1
  local tid = ARGV[at]
  local base = at + nv
  local key = task_prefix .. tid
  if max_active > 0 and room <= 0 then
    codes[r] = -3
  elseif redis.call('EXISTS', key) == 1 then
    codes[r] = -2
  else
    for i = 1, nv do hs[slot + 2 * i] = ARGV[at + i] end
    redis.call('HSET', key, unpack(hs))
    redis.call('EXPIRE', key, retention_s)
    members[#members + 1] = created_s
    members[#members + 1] = tid
    room = room - 1
    codes[r] = 1
    if inline then
      local list, envelope = KEYS[tonumber(ARGV[base + 1])], ARGV[base + 2]
      local since = KEYS[tonumber(ARGV[base + 3])]
      copies[#copies + 1] = tid
      copies[#copies + 1] = list .. '\n' .. envelope
      local z = stamps[since]
      if not z then z = {}; stamps[since] = z end
      z[#z + 1] = now
      z[#z + 1] = tid
      local l = pushes[list]
      if not l then l = {}; pushes[list] = l; lists[#lists + 1] = list end
      l[#l + 1] = envelope
      pending[#pending + 1] = ARGV[base + 4]
    end
  end
  at = at + per
end
-- One command per list and per index for the whole chunk, in the records' order.
for _, list in ipairs(lists) do redis.call('LPUSH', list, unpack(pushes[list])) end
for since, z in pairs(stamps) do redis.call('ZADD', since, unpack(z)) end
if #copies > 0 then redis.call('HSET', outbox, unpack(copies)) end
if #pending > 0 then
  redis.call('PUBLISH', channel, head .. table.concat(pending, ',') .. ']}')
end
-- One ZADD per index for the whole chunk (CHUNK keeps unpack below Lua's stack limit).
if #members > 0 then
  redis.call('ZADD', tasks_key, unpack(members))
  redis.call('ZADD', active_key, unpack(members))
  trim_indexes(tasks_key, ended_key, created, retention)
end
return codes
