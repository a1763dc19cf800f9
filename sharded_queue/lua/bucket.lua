#!lua flags=allow-oom
-- A cluster: take up to `want` tokens of a handler's rate-limit bucket, which lives in the
-- handler's slot, out of reach of the thread's cycle.lua; first give back what the last
-- reservation left unused (a batch came short).
-- KEYS: bucket.  ARGV: rate ('<per second> <bucket size>'), want, give back.
-- Returns {taken, seconds until a token when none was taken}.
local now = clock()
local tokens, rate, size = bucket_tokens(KEYS[1], ARGV[1], now)
tokens = math.min(size, tokens + tonumber(ARGV[3]))
local taken = math.max(0, math.min(tonumber(ARGV[2]), math.floor(tokens)))
bucket_spend(KEYS[1], tokens, taken, now, rate, size)
return {taken, string.format('%.6f', taken > 0 and 0 or token_wait(tokens, rate))}
