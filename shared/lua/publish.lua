-- publish.lua (fragment): publish(channel, key, owner), the record as it is now sent as one
-- update (shared.schema.Update) on the progress channel.
--
-- The message is {"v":1,"owner":<owner>,"snapshot":<snapshot>}: 1 is
-- shared.schema.SCHEMA_VERSION, and the head is what shared.schema.owner_of reads.
--
-- KEYS: none of its own; channel is the caller's KEYS entry for Keys.progress_channel, key the
-- record.
-- ARGV: none.
-- Defines: publish(channel, key, owner) -> the snapshot published (JSON text); and snapshot(key)
-- (snapshot_json.lua).
--!include snapshot_json.lua
local function publish(channel, key, owner)
  local snap = snapshot(key)
  redis.call('PUBLISH', channel, '{"v":1,"owner":' .. cjson.encode(owner) .. ',"snapshot":' .. snap .. '}')
  return snap
end
