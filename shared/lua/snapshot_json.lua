-- snapshot_json.lua (fragment): snapshot(key), a task record's snapshot as JSON text.
--
-- SNAPSHOT_FIELDS lists the record's snapshot fields in order; it must be
-- shared.schema.SNAPSHOT_FIELDS (tests/store/test_lua_scripts.py checks). Each field is stored
-- JSON-encoded, so the snapshot is put together by concatenation, with no re-encoding; a field
-- never stored reads as null.
--
-- KEYS: none of its own; snapshot(key) reads the record its caller names (one of its KEYS or a
-- key made from a prefix in them).
-- ARGV: none.
-- Defines: SNAPSHOT_FIELDS, snapshot(key) -> the JSON object text.
local SNAPSHOT_FIELDS = {
  'task_id', 'task', 'queue', 'status', 'seq', 'progress', 'result', 'error', 'created_at',
  'started_at', 'finished_at', 'stalled', 'workflow_id', 'webhook', 'attempt', 'next_attempt_at',
  'eta', 'parent_id', 'trace_id',
}
local function snapshot(key)
  local vals = redis.call('HMGET', key, unpack(SNAPSHOT_FIELDS))
  local parts = {}
  for i, name in ipairs(SNAPSHOT_FIELDS) do
    local v = vals[i]
    if not v then v = 'null' end
    parts[i] = '"' .. name .. '":' .. v
  end
  return '{' .. table.concat(parts, ',') .. '}'
end
