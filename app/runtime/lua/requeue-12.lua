--[[ Put failed or canceled jobs back to wait, their attempts reset (retry-failed). The tries already made are
  added to `earlier_attempts`, so the history numbers the new tries after them instead of writing over their rows.

  KEYS[1] the registry zset they are in (failed or canceled)      KEYS[2] marker list
  KEYS[3..12] lanes of priority 1..10
  ARGV[1] now, RQ's format      ARGV[2] job key prefix
  ARGV[3] dedup TTL, seconds, for a job without its own `dedup_ttl`
  ARGV[4..] job ids
  Returns the ids requeued (ids not in the registry, or whose job is gone, are skipped). A requeued job takes its
  dedup key back, unless another pending job holds it meanwhile (then that one keeps it). A cancel request was spent
  on the run it stopped: the new run starts without it. A job of a batch that has not ended is pending in it again.
]]
--#include flows
local live = {queued = true, scheduled = true, started = true, deferred = true, created = true}
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local job = ARGV[2] .. id
  if redis.call('ZREM', KEYS[1], id) == 1 and redis.call('EXISTS', job) == 1 then
    local attempts = tonumber(redis.call('HGET', job, 'attempts') or '1') or 1
    local left = tonumber(redis.call('HGET', job, 'retries_left') or '0') or 0
    redis.call('HINCRBY', job, 'earlier_attempts', math.max(1, attempts - left))
    local priority = math.min(10, math.max(1, tonumber(redis.call('HGET', job, 'priority') or '5') or 5))
    local was = redis.call('HMGET', job, 'status', 'batch_id')
    if was[2] then
      local batch = key_of('batch', was[2])
      local state = redis.call('HGET', batch, 'state')
      if (state == 'creating' or state == 'active') and redis.call('HINCRBY', batch, was[1], -1) >= 0 then
        redis.call('HINCRBY', batch, 'pending', 1)
      end
    end
    redis.call('PERSIST', job)
    redis.call('HSET', job, 'status', 'queued', 'enqueued_at', ARGV[1], 'retries_left', attempts - 1)
    redis.call('HDEL', job, 'ended_at', 'exc_info', 'cancel_requested')
    redis.call('RPUSH', KEYS[2 + priority], id)
    local dedup = redis.call('HGET', job, 'dedup_key')
    if dedup then
      local holder = redis.call('GET', dedup)
      if not holder or holder == id or not live[redis.call('HGET', ARGV[2] .. holder, 'status') or ''] then
        redis.call('SET', dedup, id, 'EX', tonumber(redis.call('HGET', job, 'dedup_ttl') or ARGV[3]) or ARGV[3])
      end
    end
    out[#out + 1] = id
  end
end
if #out > 0 then
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], 0, 0)
end
return out
