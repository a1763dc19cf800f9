#!lua flags=no-writes
-- A page of a handler's threads, for stats: those in its index (non-empty), then those in
-- its dead-letter index, then those in its due index, each listed once (a thread of an
-- earlier index is skipped in a later one), read with ZSCAN so that a page boundary never
-- depends on scores, which change with every lease.
-- KEYS: index, dead-letter index, due index.
-- ARGV: position: phase (1, 2, 3; 4 is the end), ZSCAN cursor of the phase, how many threads of
--       that cursor's batch were read already; then the most threads to return.
-- Returns {phase, cursor, skip (the position after the last thread returned), {threads...}}.
-- A thread that enters or leaves an index between two pages may be listed twice or not at all.
local phase, cursor, skip, want = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local found = {}
while phase <= 3 and #found < want do
  local reply = redis.call('ZSCAN', KEYS[phase], cursor, 'COUNT', want)
  local members = reply[2]
  local read = skip
  for i = 2 * skip + 1, #members, 2 do
    if #found == want then
      break
    end
    read = read + 1
    local thread = members[i]
    local listed = false
    for earlier = 1, phase - 1 do
      listed = listed or redis.call('ZSCORE', KEYS[earlier], thread) ~= false
    end
    if not listed then
      found[#found + 1] = thread
    end
  end
  if 2 * read < #members then  -- stopped inside this batch: the next page goes on from here
    skip = read
    break
  end
  skip = 0
  cursor = reply[1]
  if cursor == '0' then
    phase = phase + 1
  end
end
return {phase, cursor, skip, found}
