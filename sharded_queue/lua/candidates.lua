#!lua flags=no-writes
-- Threads of one handler visible to the coordinator now (on this server's clock),
-- longest-visible first.  KEYS: index.  ARGV: count.
-- Returns {thread, score, thread, score, ...}.
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', clock(), 'WITHSCORES', 'LIMIT', 0, ARGV[1])
