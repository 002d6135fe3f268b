--[[ Add a job: save its hash, then make it wait in its lane (or in the scheduled set when delayed).
  With a dedup key, a job still queued, scheduled or running under that key wins: nothing is created.
  A job id that exists already is never written over: enqueueing an id twice (a scheduler that died before its
  COMMIT, then its standby, fire one slot with one id) creates one job.

  KEYS[1] job hash            KEYS[2] lane list              KEYS[3] marker list
  KEYS[4] scheduled zset      KEYS[5] RQ's set of queues     KEYS[6] dedup string (optional)
  ARGV[1] job id              ARGV[2] queue key (member of KEYS[5])
  ARGV[3] due time, epoch seconds (0: now)                   ARGV[4] "1": push at the front of the lane
  ARGV[5] dedup TTL, seconds  ARGV[6] job key prefix         ARGV[7..] job hash field, value, ...
  Returns {1, job id} when created, {0, id of the earlier job} on a dedup hit or an existing id.
]]
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, ARGV[1]}
end
local live = {queued = true, scheduled = true, started = true, deferred = true, created = true}
if KEYS[6] then
  local earlier = redis.call('GET', KEYS[6])
  if earlier then
    local status = redis.call('HGET', ARGV[6] .. earlier, 'status')
    if status and live[status] then
      return {0, earlier}
    end
  end
  redis.call('SET', KEYS[6], ARGV[1], 'EX', ARGV[5])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('SADD', KEYS[5], ARGV[2], KEYS[2]) -- the queue and its lane: RQ's tools list and count both
local due = tonumber(ARGV[3])
if due > 0 then
  redis.call('ZADD', KEYS[4], due, ARGV[1])
else
  if ARGV[4] == '1' then
    redis.call('LPUSH', KEYS[2], ARGV[1])
  else
    redis.call('RPUSH', KEYS[2], ARGV[1])
  end
  if redis.call('LLEN', KEYS[3]) == 0 then -- one element wakes an idle worker; more would wake nobody else
    redis.call('LPUSH', KEYS[3], '1')
  end
end
return {1, ARGV[1]}
