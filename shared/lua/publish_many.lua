-- publish_many.lua: publishes updates already built, in order, on one channel
-- (shared.records_batch.BatchRecords.announce: the PENDING updates of records whose messages
-- another broker took).
--
-- KEYS[1]  the progress channel (Keys.progress_channel)
--
-- ARGV[1..] the updates (shared.schema.Update, JSON), in the order to publish them
--
-- Returns how many were published.
for i = 1, #ARGV do redis.call('PUBLISH', KEYS[1], ARGV[i]) end
return #ARGV
