--[[ Add a job: save its hash, then make it wait in its lane (or in the scheduled set when delayed, or in the
  deferred registry while parents it depends on have not ended).
  With a dedup key, a job still queued, scheduled or running under that key wins: nothing is created.
  A job id that exists already is never written over: enqueueing an id twice (a scheduler that died before its
  COMMIT, then its standby, fire one slot with one id) creates one job.
  A parent that completed counts as done; one that failed or was canceled is answered at once by the job's
  `on_parent_failure` (fail, cancel: the job ends without running; ignore: as done).

  KEYS[1] job hash            KEYS[2] lane list              KEYS[3] marker list
  KEYS[4] scheduled zset      KEYS[5] RQ's set of queues     KEYS[6] dedup string (optional)
  ARGV[1] job id              ARGV[2] queue key (member of KEYS[5])
  ARGV[3] due time, epoch seconds (0: now)                   ARGV[4] "1": push at the front of the lane
  ARGV[5] dedup TTL, seconds  ARGV[6] history stream cap (0: history is off)
  ARGV[7] number n of parent job ids, ARGV[8..7+n] those ids  ARGV[8+n] on parent failure: fail | cancel | ignore
  ARGV[9+n] the batch it joins ("": none)     ARGV[10+n] "1": held until its batch ends (a batch's callback)
  ARGV[11+n] its group ("": none; a job of a group waits in its group's list, KEYS[2] is not used)
  ARGV[12+n] most jobs of that group running at once, stored for the group ("": leave as it is)
  ARGV[13+n..] job hash field, value, ...
  Returns {1, job id} when created, {0, id of the earlier job} on a dedup hit or an existing id, {-1, parent id}
  when a parent does not exist (nothing is created).
]]
--#include flows
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, ARGV[1]}
end
local n = tonumber(ARGV[7])
local parents = {}
for i = 8, 7 + n do
  local status = redis.call('HGET', key_of('job', ARGV[i]), 'status')
  if not status then return {-1, ARGV[i]} end
  parents[#parents + 1] = {ARGV[i], status}
end
local live = {queued = true, scheduled = true, started = true, deferred = true, created = true}
if KEYS[6] then
  local earlier = redis.call('GET', KEYS[6])
  if earlier then
    local status = redis.call('HGET', key_of('job', earlier), 'status')
    if status and live[status] then
      return {0, earlier}
    end
  end
  redis.call('SET', KEYS[6], ARGV[1], 'EX', ARGV[5])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 13 + n))
redis.call('SADD', KEYS[5], ARGV[2], KEYS[2]) -- the queue and its lane: RQ's tools list and count both
local batch = ARGV[9 + n]
if batch ~= '' and ARGV[10 + n] ~= '1' and redis.call('EXISTS', key_of('batch', batch)) == 1 then
  redis.call('HINCRBY', key_of('batch', batch), 'total', 1) -- (a batch flushed away is not made again, half)
  redis.call('HINCRBY', key_of('batch', batch), 'pending', 1)
end
if n > 0 or ARGV[10 + n] == '1' then
  local mode, pending, failed = ARGV[8 + n], 0, nil
  for _, parent in ipairs(parents) do
    local status = parent[2]
    if status == 'failed' or status == 'canceled' or status == 'stopped' then
      if mode ~= 'ignore' and not failed then failed = parent end
    elseif status ~= 'finished' then
      pending = pending + 1
    end
  end
  if pending > 0 or failed or ARGV[10 + n] == '1' then
    local F = flows()
    local clock = F.redis_clock(ARGV[6])
    redis.call('HSET', KEYS[1], 'status', 'deferred', 'deps_pending', pending)
    redis.call('HDEL', KEYS[1], 'enqueued_at')
    redis.call('ZADD', key_of('deferred', redis.call('HGET', KEYS[1], 'origin')), clock.now, ARGV[1])
    if failed then
      local status = mode == 'cancel' and 'canceled' or 'failed'
      F.end_unrun(ARGV[1], status, clock, 'ParentFailed', 'parent ' .. failed[1] .. ' ' .. failed[2])
      F.settle(ARGV[1], status, clock, {false, batch ~= '' and batch or false})
    else
      for _, parent in ipairs(parents) do
        if not (parent[2] == 'finished' or parent[2] == 'failed' or parent[2] == 'canceled' or parent[2] == 'stopped') then
          redis.call('SADD', key_of('dependents', parent[1]), ARGV[1])
          redis.call('HSET', key_of('job', parent[1]), 'has_dependents', '1')
        end
      end
    end
    return {1, ARGV[1]}
  end
end
local group = ARGV[11 + n]
if group ~= '' and ARGV[12 + n] ~= '' then
  redis.call('HSET', key_of('group_limits', redis.call('HGET', KEYS[1], 'origin')), group, ARGV[12 + n])
end
local due = tonumber(ARGV[3])
if due > 0 then
  redis.call('ZADD', KEYS[4], due, ARGV[1])
else
  if group ~= '' then
    local f = redis.call('HMGET', KEYS[1], 'origin', 'priority')
    push_waiting(f[1], tonumber(f[2]), ARGV[1], group, ARGV[4] == '1')
  elseif ARGV[4] == '1' then
    redis.call('LPUSH', KEYS[2], ARGV[1])
  else
    redis.call('RPUSH', KEYS[2], ARGV[1])
  end
  if redis.call('LLEN', KEYS[3]) == 0 then -- one element wakes an idle worker; more would wake nobody else
    redis.call('LPUSH', KEYS[3], '1')
  end
end
return {1, ARGV[1]}
