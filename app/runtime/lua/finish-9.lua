--[[ Record how a run ended and release the job's lease, in one step.

  KEYS[1] job hash       KEYS[2] started zset     KEYS[3] worker hash      KEYS[4] results stream
  KEYS[5] stats hash     KEYS[6] target zset: finished, failed, canceled or scheduled (for a delayed retry)
  KEYS[7] lane list (an immediate retry waits there)                        KEYS[8] marker list
  KEYS[9] history stream
  ARGV[1] outcome: completed | failed | canceled | retried
  ARGV[2] started-set member     ARGV[3] job id       ARGV[4] now, epoch seconds    ARGV[5] now, RQ's format
  ARGV[6] completed, failed, canceled: seconds to keep the job (-1 forever, 0 delete at once);
          retried: seconds until the retry (0: now)
  ARGV[7] seconds the run took   ARGV[8] the run's history row, JSON ("": history is off)
  ARGV[9] history stream cap     ARGV[10] number of job hash field/value pairs that follow
  ARGV[11..] job hash field, value, ... then results stream field, value, ...
  Returns 1; 0 when the lease was no longer held (the job was recovered elsewhere): nothing is changed; -1 when
  the job itself is gone (Redis was flushed, or the job deleted while it ran): only the run's history row is
  added, so the run does not stay `started` in the history.
  A job that ends for good (not retried) moves on the jobs that wait for it and counts into its batch (flows).
]]
--#include flows
if redis.call('ZREM', KEYS[2], ARGV[2]) == 0 then
  local gone = redis.call('EXISTS', KEYS[1]) == 0
  if redis.call('HGET', KEYS[3], 'lease') == ARGV[2] then
    redis.call('HSET', KEYS[3], 'state', 'idle') -- its outcome discarded: the worker stops showing the job
    redis.call('HDEL', KEYS[3], 'current_job', 'lease', 'lease_set')
  end
  if not gone then return 0 end
  if ARGV[8] ~= '' then
    redis.call('XADD', KEYS[9], 'MAXLEN', '~', ARGV[9], '*', 'row', ARGV[8])
  end
  return -1
end
local outcome, id, now = ARGV[1], ARGV[3], tonumber(ARGV[4])
local pairs_end = 10 + 2 * tonumber(ARGV[10])
local job_fields = {}
for i = 11, pairs_end do job_fields[#job_fields + 1] = ARGV[i] end
local stream_fields = {}
for i = pairs_end + 1, #ARGV do stream_fields[#stream_fields + 1] = ARGV[i] end

local status = {completed = 'finished', failed = 'failed', canceled = 'canceled', retried = 'queued'}
local delay = tonumber(ARGV[6])
if outcome == 'retried' and delay > 0 then status.retried = 'scheduled' end
redis.call('HSET', KEYS[1], 'status', status[outcome], 'ended_at', ARGV[5], unpack(job_fields))

local keep = delay
if outcome == 'retried' then
  if delay > 0 then
    redis.call('ZADD', KEYS[6], now + delay, id)
  else
    local f = redis.call('HMGET', KEYS[1], 'group', 'origin', 'priority')
    if f[1] then push_waiting(f[2], priority_of(f[3]), id, f[1]) else redis.call('RPUSH', KEYS[7], id) end
    redis.call('LPUSH', KEYS[8], '1')
    redis.call('LTRIM', KEYS[8], 0, 0)
  end
  keep = tonumber(redis.call('HGET', KEYS[1], 'failure_ttl') or '604800')
  local dedup = redis.call('HGET', KEYS[1], 'dedup_key')
  if dedup and redis.call('GET', dedup) == id then  -- held until the retry is due, and its run after it
    local hold = delay + (tonumber(redis.call('HGET', KEYS[1], 'dedup_ttl') or '0') or 0)
    if redis.call('TTL', dedup) < hold then redis.call('EXPIRE', dedup, math.ceil(hold)) end
  end
else
  local f = redis.call('HMGET', KEYS[1], 'dedup_key', 'has_dependents', 'batch_id')
  if f[1] and redis.call('GET', f[1]) == id then redis.call('DEL', f[1]) end
  if f[2] or f[3] then
    flows().settle(id, outcome, {now = now, stamp = ARGV[5], cap = tonumber(ARGV[9])}, {f[2], f[3]})
  end
  if keep == 0 then
    redis.call('DEL', KEYS[1])
  elseif keep < 0 then
    redis.call('ZADD', KEYS[6], '+inf', id)
    redis.call('PERSIST', KEYS[1])
  else
    redis.call('ZADD', KEYS[6], now + keep, id)
    redis.call('EXPIRE', KEYS[1], keep)
  end
end
if keep ~= 0 and #stream_fields > 0 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 10, '*', unpack(stream_fields))
  if keep > 0 then redis.call('EXPIRE', KEYS[4], keep) else redis.call('PERSIST', KEYS[4]) end
end

local counter = outcome == 'completed' and 'successful_job_count' or 'failed_job_count'
local shown = redis.call('HGET', KEYS[3], 'lease')
if not shown or shown == ARGV[2] then -- not when the worker already shows its next job (a finish sent again)
  redis.call('HSET', KEYS[3], 'state', 'idle')
  -- as RQ does: "" would be taken for a job id by RQ's tools
  redis.call('HDEL', KEYS[3], 'current_job', 'lease', 'lease_set')
end
redis.call('HINCRBY', KEYS[3], counter, 1)
redis.call('HINCRBYFLOAT', KEYS[3], 'total_working_time', ARGV[7])
redis.call('HINCRBY', KEYS[5], outcome, 1)
if ARGV[8] ~= '' then
  redis.call('XADD', KEYS[9], 'MAXLEN', '~', ARGV[9], '*', 'row', ARGV[8])
end
return 1
