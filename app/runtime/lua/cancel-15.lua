--[[ Cancel a job that waits (in a lane), is delayed (in the scheduled set) or waits for its parents or its batch
  (deferred). A running job is left to its worker, which the caller tells to stop it.

  KEYS[1] job hash        KEYS[2] scheduled zset      KEYS[3] canceled zset     KEYS[4] stats hash
  KEYS[5..14] lanes of priority 1..10                    KEYS[15] history stream
  ARGV[1] job id          ARGV[2] now, epoch seconds  ARGV[3] now, RQ's format
  ARGV[4] history stream cap (0: history is off)
  Returns "canceled", or the job's status when it was none of those ("" when it does not exist).
  A running job is marked `cancel_requested`: its worker stops it, and if that worker is dead, the job is
  canceled when recovered instead of run again. A canceled job moves on the jobs that wait for it (flows).
]]
--#include flows
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '' end
local removed = 0
if status == 'queued' then
  local g = redis.call('HMGET', KEYS[1], 'group', 'origin', 'priority')
  if g[1] then
    removed = take_waiting(g[2], priority_of(g[3]), ARGV[1], g[1]) and 1 or 0
  end
  for lane = 5, 14 do
    if removed > 0 then break end
    removed = redis.call('LREM', KEYS[lane], 1, ARGV[1])
  end
elseif status == 'scheduled' then
  removed = redis.call('ZREM', KEYS[2], ARGV[1])
elseif status == 'deferred' then
  removed = 1 -- end_unrun takes it out of the deferred registry
elseif status == 'started' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
end
if removed == 0 then return status end
local clock = {now = tonumber(ARGV[2]), stamp = ARGV[3], cap = tonumber(ARGV[4])}
flows().end_unrun(ARGV[1], 'canceled', clock)
flows().settle(ARGV[1], 'canceled', clock)
return 'canceled'
