-- workflow_percent.lua: keeps a workflow's rolled-up percent from going back
-- (gateway.tasks.workflows.percent_call).
--
-- The roll-up is the mean of the children's percent, and a child's percent starts again from 0
-- when it retries; what clients see is the highest roll-up shown so far. A run with a higher
-- percent stores it; every run returns the highest. One script run, so two gateways rolling
-- the same workflow up never store a lower value over a higher one.
--
-- KEYS[1]  the workflow (Keys.workflow(workflow_id)): hash, its field 'percent' is the mark
--
-- ARGV[1]  the percent just rolled up (a number as text)
--
-- Returns the percent to show, as text: ARGV[1], or the mark if that is higher. A workflow
-- whose hash is gone gets ARGV[1] back and nothing is written.
local key = KEYS[1]
local percent = tonumber(ARGV[1])
if redis.call('EXISTS', key) == 0 then return ARGV[1] end
local mark = redis.call('HGET', key, 'percent')
if mark and tonumber(mark) >= percent then return mark end
redis.call('HSET', key, 'percent', ARGV[1])
return ARGV[1]
