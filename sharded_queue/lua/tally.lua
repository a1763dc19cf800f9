#!lua flags=allow-oom
-- Count one thread again (a recount, or after writes that bypassed the scripts).
-- KEYS: the thread's orders (its slot)[, its handler's counts, tallies, heads (one server)].
-- ARGV: thread, the thread's key stem.
-- Returns {the thread's counts for the client to apply (a cluster; else empty)}.
return {count_thread(counting(2), ARGV[1], ARGV[2], {})}
