--[[ Flows, for the scripts where a job ends for good or waits on others (`--#include flows`).

  A job with parents waits, status "deferred" in its queue's deferred registry, with `deps_pending` parents still
  to end; each parent names it in its dependents set and carries `has_dependents`. A job of a batch carries
  `batch_id`; the batch's hash counts its jobs. A batch's callbacks are jobs held "deferred" until the batch ends.
  `flows().settle` is called once, in the same script, for every job that ends for good (completed, failed, canceled,
  or deleted while pending, which counts as canceled): it moves the dependents on by their `on_parent_failure`
  (fail, cancel: they end too, and so do theirs; ignore: as if the parent completed) and counts the job into
  its batch, which fires its callbacks when its last job has ended. Each transition happens once: under Redis'
  script atomicity, a status is checked before it is changed.

  Keys are built with `key_of` from the families of queues.py (`keys`, generated at load); QUEUES_SET,
  HISTORY_STREAM and BATCH_TTL come with them. `clock` is
  {now = epoch seconds, stamp = now in RQ's format, cap = history stream cap (0: history is off)}.
]]
--#include keys
--#include rq_time
--#include waiting
-- The library is built at its first use in a call: a script whose call takes no flows branch (the job path of a
-- job without parents, batch or dependents) creates one closure for it instead of seven.
local FLOWS
local function flows()
  if FLOWS then return FLOWS end

  -- The clock of a script that is not given one: Redis' own.
  local function redis_clock(cap)
    local t = redis.call('TIME')
    return {now = tonumber(t[1]) + tonumber(t[2]) / 1000000, stamp = rq_time(t), cap = tonumber(cap) or 0}
  end

  -- A held job goes to wait in its lane: its parents have ended, or its batch has. Returns whether it was held.
  local function release(id, clock)
    local job = key_of('job', id)
    local f = redis.call('HMGET', job, 'status', 'origin', 'priority', 'group')
    if f[1] ~= 'deferred' or not f[2] then return false end
    redis.call('ZREM', key_of('deferred', f[2]), id)
    redis.call('HSET', job, 'status', 'queued', 'enqueued_at', clock.stamp)
    local list = push_waiting(f[2], priority_of(f[3]), id, f[4])
    if not f[4] then redis.call('SADD', QUEUES_SET, key_of('queue', f[2]), list) end
    local marker = key_of('marker', f[2])
    if redis.call('LLEN', marker) == 0 then redis.call('LPUSH', marker, '1') end
    return true
  end

  -- A job that is not running ends without running (`status`: failed or canceled), with its history row; the caller
  -- has taken it out of where it waited (a held job: here). `reason` (optional) is its error.
  local function end_unrun(id, status, clock, error_type, reason)
    local job = key_of('job', id)
    local f = redis.call('HMGET', job, 'origin', 'failure_ttl', 'dedup_key', 'attempts', 'retries_left',
      'description', 'schedule_id', 'schedule_slot', 'earlier_attempts', 'enqueued_at')
    local queue = f[1]
    local keep = tonumber(f[2] or '604800') or 604800
    local attempt = (tonumber(f[9]) or 0) + math.max(1, (tonumber(f[4]) or 1) - (tonumber(f[5]) or 0))
    redis.call('ZREM', key_of('deferred', queue), id)
    redis.call('HSET', job, 'status', status, 'ended_at', clock.stamp)
    if reason then redis.call('HSET', job, 'exc_info', reason) end
    redis.call('ZADD', key_of(status, queue), clock.now + keep, id)
    redis.call('EXPIRE', job, keep)
    redis.call('HINCRBY', key_of('stats', queue), status, 1)
    if f[3] and redis.call('GET', f[3]) == id then redis.call('DEL', f[3]) end
    if clock.cap > 0 then
      local row = {job_id = id, attempt = attempt, queue = queue,
        task = f[6] and string.match(f[6], '^([^(]+)') or '?', status = status, enqueued_at = f[10] or nil,
        schedule_id = f[7] or nil, schedule_slot = f[8] or nil, trigger = f[7] and (f[8] and 'cron' or 'run_now') or nil,
        started_at = clock.now, ended_at = clock.now, error_type = reason and error_type or nil, error_message = reason}
      redis.call('XADD', HISTORY_STREAM, 'MAXLEN', '~', clock.cap, '*', 'row', cjson.encode(row))
    end
  end

  -- The batch's last job has ended: onComplete runs, onSuccess runs if every job completed (else it is canceled).
  -- The batch notes each callback it released (`fired`: one canceled by hand meanwhile is not).
  local function end_batch(batch, batch_id, clock, ended)
    local f = redis.call('HMGET', batch, 'failed', 'canceled', 'on_success', 'on_complete')
    local ok = (tonumber(f[1]) or 0) + (tonumber(f[2]) or 0) == 0
    redis.call('HSET', batch, 'state', ok and 'completed' or 'failed', 'ended_at', clock.now)
    redis.call('EXPIRE', batch, BATCH_TTL)
    if f[4] and release(f[4], clock) then redis.call('HSET', batch, 'on_complete_fired', '1') end
    if f[3] then
      if ok then
        if release(f[3], clock) then redis.call('HSET', batch, 'on_success_fired', '1') end
      elseif redis.call('HGET', key_of('job', f[3]), 'status') == 'deferred' then
        end_unrun(f[3], 'canceled', clock, 'BatchFailed', 'batch ' .. batch_id .. ' had failed or canceled jobs')
        ended[#ended + 1] = {f[3], 'canceled'}
      end
    end
  end

  -- The batch's jobs are all created: from now on the end of its last job ends it (now, if all have ended).
  local function seal_batch(batch, batch_id, clock, ended)
    if redis.call('HGET', batch, 'state') ~= 'creating' then return end
    redis.call('HSET', batch, 'state', 'active')
    if tonumber(redis.call('HGET', batch, 'pending') or '0') <= 0 then end_batch(batch, batch_id, clock, ended) end
  end

  -- A batch job ended for good (`how`: completed, failed, canceled): counted once per job while the batch is not
  -- over. The job keeps how it was counted (`batch_counted`): a job put back to run by a tool that does not tell the
  -- batch (RQ's own requeue) and ending again moves its count instead of ending the batch early.
  local function count_in_batch(job_id, batch_id, how, clock, ended)
    local batch = key_of('batch', batch_id)
    local state = redis.call('HGET', batch, 'state')
    if state ~= 'creating' and state ~= 'active' then return end -- gone, or over (a job requeued by hand since)
    local job = key_of('job', job_id)
    local before = redis.call('HGET', job, 'batch_counted')
    redis.call('HSET', job, 'batch_counted', how)
    redis.call('HINCRBY', batch, how, 1)
    if before then
      redis.call('HINCRBY', batch, before, -1)
    elseif redis.call('HINCRBY', batch, 'pending', -1) <= 0 and state == 'active' then
      end_batch(batch, batch_id, clock, ended)
    end
  end

  -- Job `id` ended for good (`how`: completed, failed, canceled). `flags` = {has_dependents, batch_id} as the caller
  -- read them from the job's hash (nil: read here); the jobs this ends in turn are settled too.
  local function settle(id, how, clock, flags)
    local ended = {{id, how, flags}}
    local i = 1
    while i <= #ended do
      local job_id, outcome, f = ended[i][1], ended[i][2], ended[i][3]
      i = i + 1
      f = f or redis.call('HMGET', key_of('job', job_id), 'has_dependents', 'batch_id')
      if f[1] then
        local dependents = key_of('dependents', job_id)
        local children = {}
        for _, child in ipairs(redis.call('SMEMBERS', dependents)) do
          local c = redis.call('HMGET', key_of('job', child), 'status', 'on_parent_failure', 'created_at')
          children[#children + 1] = {child, c[1], c[2], c[3] or ''}
        end
        table.sort(children, function(x, y) return x[4] < y[4] end) -- released in the order they were created
        for _, c in ipairs(children) do
          local child, child_key = c[1], key_of('job', c[1])
          c = {c[2], c[3]}
          if c[1] == 'deferred' then
            if outcome == 'completed' or c[2] == 'ignore' then
              if redis.call('HINCRBY', child_key, 'deps_pending', -1) <= 0 then release(child, clock) end
            else
              local status = c[2] == 'cancel' and 'canceled' or 'failed'
              end_unrun(child, status, clock, 'ParentFailed', 'parent ' .. job_id .. ' ' .. outcome)
              ended[#ended + 1] = {child, status}
            end
          end
        end
        redis.call('DEL', dependents)
      end
      if f[2] then count_in_batch(job_id, f[2], outcome, clock, ended) end
    end
  end
  FLOWS = {redis_clock = redis_clock, release = release, end_unrun = end_unrun, seal_batch = seal_batch,
    settle = settle}
  return FLOWS
end
