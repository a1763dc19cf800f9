#!lua flags=allow-oom
-- A handler's index of threads, on a cluster, where it lives in another slot than
-- the threads (on one server the thread scripts do this themselves): the
-- coordinator's index of non-empty threads, scored by when a thread becomes
-- visible on this server's clock, the index of threads with dead letters, or the
-- due index of threads with deferred or recurring requests.
-- KEYS: index[, the handler's paused hash].  ARGV: mode, offset (ms), threads...
--   add   visible now, unless already indexed (after an append; keeps a hidden thread hidden)
--   show  visible now (after a release that left messages)
--   wake  visible now, if indexed (a resume)
--   hide  visible only after offset, if indexed (a lease was taken or renewed)
--   take  as hide, unless the handler is paused (its paused hash given): then hidden until the
--         pause ends, and the reply is {-2, until} (the client lets the lease go)
--   until hidden until offset (a time on this server's clock: an acquire refused by a control)
--   at    the due index: scored ARGV[2] (a due time), unless already scored lower
-- Runs under a full Redis: a thread whose tube was appended must get indexed.
local mode = ARGV[1]
local now = clock()
if mode == 'take' then
  local all = handler_paused(KEYS[2], now)
  if all then
    redis.call('ZADD', KEYS[1], 'XX', as_time(all), ARGV[3])
    return {-2, as_time(all)}
  end
  mode = 'hide'
end
for i = 3, #ARGV do
  if mode == 'add' then
    redis.call('ZADD', KEYS[1], 'NX', now, ARGV[i])
  elseif mode == 'at' then
    redis.call('ZADD', KEYS[1], 'LT', ARGV[2], ARGV[i])
  elseif mode == 'show' then
    redis.call('ZADD', KEYS[1], now, ARGV[i])
  elseif mode == 'wake' then
    redis.call('ZADD', KEYS[1], 'XX', now, ARGV[i])
  elseif mode == 'until' then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
  else
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]) / 1000, ARGV[i])
  end
end
return #ARGV - 2
