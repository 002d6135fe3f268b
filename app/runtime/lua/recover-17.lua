--[[ Take back running jobs whose worker is gone: leases that expired (no heartbeat), or the one lease of a worker
  known to be dead (never a lease another worker holds). Each goes back to the front of its lane, or to the failed
  set when it has no attempt left. Only the caller that removes a lease acts on it, so two recoverers never requeue a job twice.

  Leases are judged by Redis' own clock. Time nobody watched does not count against them: when no look at this
  queue's leases came for ARGV[9] seconds (Redis was down or unreachable for everyone, so no owner could renew),
  expired leases are left alone for ARGV[10] more seconds, time for their live owners to renew them or record
  how their runs ended.

  KEYS[1] started zset     KEYS[2] failed zset      KEYS[3] marker list      KEYS[4] stats hash
  KEYS[5..14] lanes of priority 1..10      KEYS[15] history stream          KEYS[16] canceled zset
  KEYS[17] the queue's lease clock (hash: `seen`, Redis time of the last look at its expired leases; `grace`,
           when the grace after an unwatched gap ends)
  ARGV[1] now, epoch seconds    ARGV[2] now, RQ's format    ARGV[3] job key prefix    ARGV[4] most leases
  ARGV[5] "expired" (leases past their end), or "member:" and one exact lease (that of a worker known to be dead,
          named in its hash: never a lease another worker took since)
  ARGV[6] "1": the lost run counts as an attempt      ARGV[7] error text recorded on the job
  ARGV[8] history stream cap (0: history is off)
  ARGV[9] seconds without a look after which expired leases get a grace   ARGV[10] that grace, seconds
  A job canceled while it ran (`cancel_requested`) goes to the canceled set instead. A job that ends moves on the
  jobs that wait for it and counts into its batch (flows).
  Returns a flat list: job id, "requeued" | "failed" | "canceled", ...
]]
--#include flows
local members = {}
if ARGV[5] == 'expired' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local clock = redis.call('HMGET', KEYS[17], 'seen', 'grace')
  local seen, grace = tonumber(clock[1]), tonumber(clock[2]) or 0
  if seen and now - seen > tonumber(ARGV[9]) then grace = now + tonumber(ARGV[10]) end
  redis.call('HSET', KEYS[17], 'seen', now, 'grace', grace)
  if now < grace then return {} end
  -- leases are scored in milliseconds (app.runtime.leases)
  members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.3f', now * 1000), 'LIMIT', 0,
    tonumber(ARGV[4]))
else
  members = {string.sub(ARGV[5], 8)}
end
-- The job ends for good: its status, the registry that keeps it for its failure TTL, its dedup key freed.
local function end_job(job, id, status, text, registry)
  local keep = tonumber(redis.call('HGET', job, 'failure_ttl') or '604800') or 604800
  redis.call('HSET', job, 'status', status, 'ended_at', ARGV[2], 'exc_info', text)
  redis.call('ZADD', registry, tonumber(ARGV[1]) + keep, id)
  redis.call('EXPIRE', job, keep)
  redis.call('HINCRBY', KEYS[4], status, 1)
  local dedup = redis.call('HGET', job, 'dedup_key')
  if dedup and redis.call('GET', dedup) == id then redis.call('DEL', dedup) end
  flows().settle(id, status, {now = tonumber(ARGV[1]), stamp = ARGV[2], cap = tonumber(ARGV[8])})
end

local out = {}
for _, member in ipairs(members) do
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local id = string.match(member, '^(.*):[^:]*$') or member
    local job = ARGV[3] .. id
    if redis.call('EXISTS', job) == 1 then
      local left = tonumber(redis.call('HGET', job, 'retries_left') or '0') or 0
      local canceled = redis.call('HGET', job, 'cancel_requested') == '1'
      redis.call('HINCRBY', KEYS[4], 'abandoned', 1)
      local f = redis.call('HMGET', job, 'attempts', 'origin', 'description', 'worker_name', 'enqueued_at',
        'schedule_id', 'started_at', 'earlier_attempts', 'schedule_slot')
      local attempt = (tonumber(f[8]) or 0) + math.max(1, (tonumber(f[1]) or 1) - left)
      redis.call('HSET', job, 'last_attempt', attempt)
      if ARGV[8] ~= '0' then
        local row = {job_id = id, attempt = attempt,
          queue = f[2] or nil,
          task = f[3] and string.match(f[3], '^([^(]+)') or '?', status = 'abandoned', worker = f[4] or nil,
          enqueued_at = f[5] or nil, schedule_id = f[6] or nil, started_at = f[7] or nil, ended_at = tonumber(ARGV[1]),
          schedule_slot = f[9] or nil, trigger = f[6] and (f[9] and 'cron' or 'run_now') or nil,
          error_type = canceled and 'Canceled' or 'Abandoned', error_message = ARGV[7]}
        redis.call('XADD', KEYS[15], 'MAXLEN', '~', ARGV[8], '*', 'row', cjson.encode(row))
      end
      if canceled then
        end_job(job, id, 'canceled', 'canceled while running', KEYS[16])
        out[#out + 1] = id
        out[#out + 1] = 'canceled'
      elseif ARGV[6] == '0' or left > 0 then
        if ARGV[6] == '1' then
          redis.call('HSET', job, 'retries_left', left - 1)
        else  -- the lost run keeps its history row: the rerun is numbered after it instead of writing over it
          redis.call('HINCRBY', job, 'earlier_attempts', 1)
        end
        local g = redis.call('HMGET', job, 'priority', 'group', 'origin')
        local priority = priority_of(g[1])
        if g[2] then push_waiting(g[3], priority, id, g[2], true) else redis.call('LPUSH', KEYS[4 + priority], id) end
        redis.call('HSET', job, 'status', 'queued', 'enqueued_at', ARGV[2], 'exc_info', ARGV[7])
        redis.call('LPUSH', KEYS[3], '1')
        redis.call('LTRIM', KEYS[3], 0, 0)
        out[#out + 1] = id
        out[#out + 1] = 'requeued'
      else
        end_job(job, id, 'failed', ARGV[7], KEYS[2])
        out[#out + 1] = id
        out[#out + 1] = 'failed'
      end
    end
  end
end
return out
