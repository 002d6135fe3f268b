--[[ Move delayed jobs that are due (and delayed retries) from the scheduled set into their priority lane.

  KEYS[1] scheduled zset      KEYS[2] marker list        KEYS[3..12] lanes of priority 1..10
  ARGV[1] now, epoch seconds  ARGV[2] now, RQ's format   ARGV[3] job key prefix    ARGV[4] most jobs to move
  Returns the number of jobs moved.
]]
--#include waiting
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[4]))
local moved = 0
for _, id in ipairs(due) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local job = ARGV[3] .. id
    if redis.call('EXISTS', job) == 1 then
      local g = redis.call('HMGET', job, 'priority', 'group', 'origin')
      local priority = priority_of(g[1])
      if g[2] then push_waiting(g[3], priority, id, g[2]) else redis.call('RPUSH', KEYS[2 + priority], id) end
      redis.call('HSET', job, 'status', 'queued', 'enqueued_at', ARGV[2])
      moved = moved + 1
    end
  end
end
if moved > 0 then
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], 0, 0)
end
return moved
