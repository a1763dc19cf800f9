-- Shared by every script (inserted after its flags line when loaded).
-- Times the storage compares or scores come from this server's clock, never a
-- client's: clients' clocks may be off by hours.

-- Seconds since the epoch on the storage server, to the microsecond.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
