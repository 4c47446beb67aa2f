-- terminal.lua (fragment): TERMINAL[status] is true for a terminal status as records store it
-- (JSON-encoded, quotes included).
--
-- The set must be shared.status.TERMINAL_NAMES (tests/store/test_lua_scripts.py checks).
--
-- KEYS, ARGV: none.
-- Defines: TERMINAL.
local TERMINAL = {
  ['"CANCELLED"'] = true, ['"COMPLETED"'] = true, ['"FAILED"'] = true, ['"TIMED_OUT"'] = true,
}
