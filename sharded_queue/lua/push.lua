-- Append envelopes to a tube and mark its order non-empty, in one call.
-- KEYS: tube, orders, stamp (unique per registration and tube).
-- ARGV: order, order rank, envelopes joined by '\n', stamp ttl (ms).
-- Envelopes are compact JSON, which never contains a raw newline; sending them
-- as one argument saves the client packing thousands of arguments.
-- The stamp makes the call idempotent: a client that retries it after a lost
-- reply appends nothing twice. Returns the number appended (0 on a retry).
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[4]) then
  return 0
end
local data = ARGV[3]
local chunk = {}
local count = 0
local start = 1
while true do
  local stop = string.find(data, '\n', start, true)
  chunk[#chunk + 1] = string.sub(data, start, stop and stop - 1 or -1)
  if #chunk == 4000 then
    redis.call('RPUSH', KEYS[1], unpack(chunk))
    count = count + #chunk
    chunk = {}
  end
  if not stop then
    break
  end
  start = stop + 1
end
if #chunk > 0 then
  redis.call('RPUSH', KEYS[1], unpack(chunk))
  count = count + #chunk
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return count
