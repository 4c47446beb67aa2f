-- now.lua (fragment): now(), the Redis server's clock in seconds (TIME).
--
-- Heartbeats and stall checks read the clock of the Redis server, never of a worker or a
-- gateway, so clock skew between hosts cannot fake or hide a stall.
--
-- KEYS, ARGV: none.
-- Defines: now() -> seconds since the epoch, with microseconds.
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
