#!lua
-- Append envelopes to tubes and mark their orders non-empty; on one server also
-- index their threads and wake idle loops, all in one atomic call.
-- Not allow-oom: a full Redis refuses the whole call before it writes anything.
-- KEYS: stamps, then per tube: tube, orders; then the handler's index when ARGV[3] ~= ''.
-- ARGV: stamp, stamp window (s), wake channel ('' for a cluster slot's call: the
--       client indexes and wakes once every slot is appended), wake message,
--       count f of settled stamps to forget, the f stamps,
--       then per tube: thread, order, order rank, envelopes joined by '\n'.
-- Envelopes are compact JSON, which never contains a raw newline; sending a tube's
-- envelopes as one argument saves the client packing thousands of arguments.
-- The stamp makes the call idempotent: a client that retries it after a lost
-- reply appends nothing twice and gets the first call's count back. A stamp is
-- scored (expiry second) * 2^20 + count and pruned once expired; the client
-- forgets its settled stamps on its next call, so few are ever kept.
-- Returns the number of envelopes appended.
local SCALE = 1048576
local stamps = KEYS[1]
local now = clock()
redis.call('ZREMRANGEBYSCORE', stamps, '-inf', '(' .. string.format('%.0f', math.floor(now) * SCALE))
local known = redis.call('ZSCORE', stamps, ARGV[1])
if known then
  return tonumber(known) % SCALE
end
local forget = tonumber(ARGV[5])
if forget > 0 then
  redis.call('ZREM', stamps, unpack(ARGV, 6, 5 + forget))
end
local channel = ARGV[3]
local index = channel ~= '' and KEYS[#KEYS] or nil
local count = 0
local arg = 6 + forget
for key = 2, #KEYS - (index and 1 or 0), 2 do
  local thread, order, rank, data = ARGV[arg], ARGV[arg + 1], ARGV[arg + 2], ARGV[arg + 3]
  arg = arg + 4
  local chunk = {}
  local start = 1
  while true do
    local stop = string.find(data, '\n', start, true)
    chunk[#chunk + 1] = string.sub(data, start, stop and stop - 1 or -1)
    if #chunk == 4000 or not stop then
      redis.call('RPUSH', KEYS[key], unpack(chunk))
      count = count + #chunk
      chunk = {}
    end
    if not stop then
      break
    end
    start = stop + 1
  end
  redis.call('ZADD', KEYS[key + 1], rank, order)
  if index then
    redis.call('ZADD', index, 'NX', now, thread)
  end
end
local window = tonumber(ARGV[2])
redis.call('ZADD', stamps, (math.floor(now) + window) * SCALE + count, ARGV[1])
redis.call('EXPIRE', stamps, window)
if index then
  redis.call('PUBLISH', channel, ARGV[4])
end
return count
