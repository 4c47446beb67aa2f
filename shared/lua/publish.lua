-- publish.lua (fragment): publish(channel, key, owner), the record as it is now sent as one
-- update (shared.schema.Update) on the progress channel.
--
-- The message is {"v":1,"owner":<owner>,"snapshot":<snapshot>,"at":<when>}: 1 is
-- shared.schema.SCHEMA_VERSION, the head is what shared.schema.owner_of reads, and "at" is the
-- Redis server's clock (TIME, seconds with microseconds) when it was published, from which the
-- gateways measure the delivery lag (gateway.http.metrics).
--
-- KEYS: none of its own; channel is the caller's KEYS entry for Keys.progress_channel, key the
-- record.
-- ARGV: none.
-- Defines: publish(channel, key, owner) -> the snapshot published (JSON text); and snapshot(key)
-- (snapshot_json.lua).
--!include snapshot_json.lua
local function publish(channel, key, owner)
  local snap = snapshot(key)
  local t = redis.call('TIME')
  local at = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
  redis.call('PUBLISH', channel,
    '{"v":1,"owner":' .. cjson.encode(owner) .. ',"snapshot":' .. snap .. ',"at":' .. at .. '}')
  return snap
end
