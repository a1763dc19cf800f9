#!lua flags=no-writes
-- What a coordinator poll needs of one handler, on this server's clock.
-- KEYS: index (non-empty threads, scored by when visible), due index (threads with
--       deferred or recurring requests, scored by the earliest one's due time).
-- ARGV: count.
-- Returns {{thread, score, ...} visible now, longest-visible first,
--          {thread, ...} with requests due now, seconds until the next due (false: none)}.
local now = clock()
local visible = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, ARGV[1])
local later = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)[2]
return {visible, due, later and tostring(tonumber(later) - now) or false}
