--[[ Renew a running job's lease, judged by Redis' own clock, and tell the worker whether it still holds it.

  KEYS[1] started zset (rq:wip)     KEYS[2] job hash
  ARGV[1] started-set member (the lease)   ARGV[2] lease, seconds   ARGV[3] now, RQ's format (the job's heartbeat)
  Returns 1 when the lease was held and now ends ARGV[2] seconds from Redis' now; 0 when it is gone (recovered
  for another worker, or Redis lost it): the caller must stop the run and record nothing.
]]
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
local t = redis.call('TIME')
-- milliseconds, as every lease (app.runtime.leases)
redis.call('ZADD', KEYS[1], 'XX', tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 + tonumber(ARGV[2]) * 1000, ARGV[1])
redis.call('HSET', KEYS[2], 'last_heartbeat', ARGV[3])
return 1
