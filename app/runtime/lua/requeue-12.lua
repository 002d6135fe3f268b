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
  A job with parents runs only once they have completed: it waits (deferred) for those still to complete, and is
  left where it is while one failed, was canceled or is gone (unless its on_parent_failure is ignore); a batch's
  callback waits for its batch while the batch has not ended.
]]
--#include flows
local live = {queued = true, scheduled = true, started = true, deferred = true, created = true}
local ended = {failed = true, canceled = true, stopped = true}
local clock
-- Where a job put back waits: nil when it must not run now (a parent failed, was canceled or is gone), "deferred"
-- while parents are still to complete (it joins their dependents again) or its batch, whose callback it is, has
-- not ended, else "queued".
local function next_status(job, id)
  local f = redis.call('HMGET', job, 'dependency_ids', 'callback_of', 'on_parent_failure')
  if f[2] then
    local state = redis.call('HGET', key_of('batch', f[2]), 'state')
    return (state == 'creating' or state == 'active') and 'deferred' or 'queued', 0, {}
  end
  if not f[1] then return 'queued', 0, {} end
  local waiting = {}
  for _, parent in ipairs(cjson.decode(f[1])) do
    local status = redis.call('HGET', key_of('job', parent), 'status')
    if not status or ended[status] then
      if f[3] ~= 'ignore' then return nil end
    elseif status ~= 'finished' then
      waiting[#waiting + 1] = parent
    end
  end
  return #waiting > 0 and 'deferred' or 'queued', #waiting, waiting
end

local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local job = ARGV[2] .. id
  local status, pending, parents = next_status(job, id)
  if status and redis.call('ZREM', KEYS[1], id) == 1 and redis.call('EXISTS', job) == 1 then
    local attempts = tonumber(redis.call('HGET', job, 'attempts') or '1') or 1
    local left = tonumber(redis.call('HGET', job, 'retries_left') or '0') or 0
    redis.call('HINCRBY', job, 'earlier_attempts', math.max(1, attempts - left))
    local f = redis.call('HMGET', job, 'priority', 'group', 'origin', 'batch_id', 'batch_counted')
    if f[4] and f[5] then -- pending in its batch again, its count taken back
      local batch = key_of('batch', f[4])
      local state = redis.call('HGET', batch, 'state')
      if state == 'creating' or state == 'active' then
        redis.call('HINCRBY', batch, f[5], -1)
        redis.call('HINCRBY', batch, 'pending', 1)
        redis.call('HDEL', job, 'batch_counted')
      end
    end
    redis.call('PERSIST', job)
    redis.call('HSET', job, 'status', status, 'enqueued_at', ARGV[1], 'retries_left', attempts - 1)
    redis.call('HDEL', job, 'ended_at', 'exc_info', 'cancel_requested')
    if status == 'deferred' then
      clock = clock or flows().redis_clock(0)
      redis.call('HSET', job, 'deps_pending', pending)
      redis.call('ZADD', key_of('deferred', f[3]), clock.now, id)
      for _, parent in ipairs(parents) do
        redis.call('SADD', key_of('dependents', parent), id)
        redis.call('HSET', key_of('job', parent), 'has_dependents', '1')
      end
    elseif f[2] then
      push_waiting(f[3], priority_of(f[1]), id, f[2])
    else
      redis.call('RPUSH', KEYS[2 + priority_of(f[1])], id)
    end
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
