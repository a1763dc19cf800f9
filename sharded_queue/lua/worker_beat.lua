#!lua flags=allow-oom
-- Heartbeat of one worker's record in the worker registry, on the storage server's clock.
-- KEYS: registry (zset: worker id -> expiry in ms), record (hash of this worker),
--       handler names (set).
-- ARGV: worker id, ttl (ms), record (JSON), the names of the handlers it runs...
-- The record hash holds `record` (the worker's JSON), `started_at` (its first heartbeat) and
-- `beat_at` (this one), both in server milliseconds. Ids whose expiry passed are pruned.
-- Runs under a full Redis (allow-oom, a few bytes): the registry must show the workers draining it.
-- Returns {the server time in ms, the ids of the live workers...} (wake-ups are shared among them).
local now = math.floor(clock() * 1000)  -- lib.lua: the server's clock
local ttl = tonumber(ARGV[2])
redis.call('HSETNX', KEYS[2], 'started_at', string.format('%d', now))
redis.call('HSET', KEYS[2], 'record', ARGV[3], 'beat_at', string.format('%d', now))
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[1], string.format('%d', now + ttl), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now))
for i = 4, #ARGV do
  redis.call('SADD', KEYS[3], ARGV[i])
end
return {string.format('%d', now), unpack(redis.call('ZRANGE', KEYS[1], 0, -1))}
