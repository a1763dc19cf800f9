#!lua
-- Set a pause: a hash field to when it ends, on this server's clock.
-- KEYS: the hash (a handler's paused hash, or a thread's controls).
-- ARGV: field, '' (no end), '+seconds' (from now) or '@time' (a time another call computed).
-- Returns when it ends, as a string (FOREVER for no end).
local when = ARGV[2]
local ends = FOREVER
if string.sub(when, 1, 1) == '+' then
  ends = clock() + tonumber(string.sub(when, 2))
elseif string.sub(when, 1, 1) == '@' then
  ends = tonumber(string.sub(when, 2))
end
redis.call('HSET', KEYS[1], ARGV[1], as_time(ends))
return as_time(ends)
