--[[ Take the next job for a worker: the first queue (in the worker's order) that is not paused, under its
  concurrency cap and rate limit, gives the first job of its highest-priority non-empty lane. The job is
  marked started and leased to the worker in one step, so no other worker can take it. The lease ends ARGV[5]
  seconds from Redis' own clock (never a worker's), and the worker's hash names it (`lease`, `lease_set`): a
  worker that asks again with the same execution id (its reply was lost on the way) gets the job it already holds
  instead of leaving a lease nobody runs.
  Only a job whose status is "queued" is taken: an id left in a lane by a job that moved on (deleted, canceled,
  already taken because its id was pushed twice) is dropped, so a job never runs twice from one queueing.
  Leases are scored in milliseconds (app.runtime.leases: RQ's cleanup, which `rq info` runs, must never see one
  expire).

  KEYS[1]  the worker's hash
  then 13 keys per queue: paused string, limiter string, started zset (rq:wip), lanes of priority 1..10
  ARGV[1] unused (Redis' clock is read)  ARGV[2] now, RQ's date format ("": Redis' clock, formatted here; for a
  dequeue sent behind a blocking pop, which runs later than it is sent)   ARGV[3] worker name
  ARGV[4] execution id           ARGV[5] lease, seconds            ARGV[6] job key prefix
  ARGV[7] number of job hash fields to return, ARGV[8..] those fields
  then 6 values per queue (after the fields): concurrency cap (0: none), rate-limit jobs, rate-limit window in ms,
  jobs of one group running at once (0: no limit; a group's own in the queue's group-limits hash wins), the
  queue's turn counter key, queue name
  In a queue whose jobs ever had groups (its turn counter exists), each priority's waiting jobs are taken in
  rotation: each group with jobs waiting at that priority is one turn, the lane's jobs without a group one more;
  a group at its limit is passed over (at most MAX_TURNS turns are looked at per priority).
  Returns {queue number (1-based), started-set member, values of the fields asked for} for a job, else
  {0, ms until a rate limit frees a slot (-1: no limit is in the way)}.
]]
--#include rq_time
--#include keys
local MAX_TURNS = 100
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local now_ms = now * 1000
local queues = (#KEYS - 1) / 13
local nfields = tonumber(ARGV[7])
local fields = {}
for i = 8, 7 + nfields do fields[#fields + 1] = ARGV[i] end
local held = redis.call('HMGET', KEYS[1], 'lease_set', 'lease')
if held[2] and string.sub(held[2], -(#ARGV[4] + 1)) == ':' .. ARGV[4] then
  for q = 0, queues - 1 do
    local started = KEYS[1 + q * 13 + 3]
    if started == held[1] and redis.call('ZSCORE', started, held[2]) then
      local id = string.match(held[2], '^(.*):[^:]*$')
      return {q + 1, held[2], redis.call('HMGET', ARGV[6] .. id, unpack(fields))}
    end
  end
end
-- the first job of `list` still queued (an id left by a job that moved on is dropped: skipped)
local function pop_queued(list)
  local id = redis.call('LPOP', list)
  while id do
    if redis.call('HGET', ARGV[6] .. id, 'status') == 'queued' then return id end
    id = redis.call('LPOP', list)
  end
  return nil
end

-- jobs of each group running now in a queue (its live leases), counted once per call, when a limit needs it
local running
local function running_of(group, started)
  if not running then
    running = {}
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', started, now_ms, '+inf')) do
      local g = redis.call('HGET', ARGV[6] .. string.match(member, '^(.*):[^:]*$'), 'group')
      if g then running[g] = (running[g] or 0) + 1 end
    end
  end
  return running[group] or 0
end

-- the next job at one priority of a queue with groups: the turns of its ring in order, each taken turn moved last
local function pop_turn(name, turn, priority, lane, started, limit)
  local ring = key_of('ring' .. priority, name)
  if redis.call('EXISTS', ring) == 0 then return pop_queued(lane) end
  if not redis.call('ZSCORE', ring, '') and redis.call('LLEN', lane) > 0 then
    redis.call('ZADD', ring, redis.call('INCR', turn), '')
  end
  for _ = 1, math.min(MAX_TURNS, redis.call('ZCARD', ring)) do
    local group = redis.call('ZRANGE', ring, 0, 0)[1]
    local list, id = lane, nil
    if group ~= '' then list = key_of('group' .. priority, name, group) end
    local most = group ~= '' and tonumber(redis.call('HGET', key_of('group_limits', name), group) or limit) or 0
    if most == 0 or running_of(group, started) < most then
      id = pop_queued(list)
    end
    if redis.call('LLEN', list) == 0 then
      redis.call('ZREM', ring, group)
    else
      redis.call('ZADD', ring, redis.call('INCR', turn), group)
    end
    if id then
      if running and group ~= '' then running[group] = (running[group] or 0) + 1 end
      return id
    end
  end
  return nil
end

local wait = -1
for q = 0, queues - 1 do
  local k = 1 + q * 13
  local a = 8 + nfields + q * 6
  local cap, rate, window = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2]
  local open = redis.call('EXISTS', KEYS[k + 1]) == 0
  if open and cap > 0 and redis.call('ZCOUNT', KEYS[k + 3], now_ms, '+inf') >= cap then
    open = false
  end
  if open and rate > 0 and tonumber(redis.call('GET', KEYS[k + 2]) or '0') >= rate then
    open = false
    local ttl = redis.call('PTTL', KEYS[k + 2])
    if ttl > 0 and (wait < 0 or ttl < wait) then wait = ttl end
  end
  if open then
    local turn, name = ARGV[a + 4], ARGV[a + 5]
    local grouped = redis.call('EXISTS', turn) == 1
    running = nil
    for lane = k + 4, k + 13 do
      local id
      if grouped then
        id = pop_turn(name, turn, lane - k - 3, KEYS[lane], KEYS[k + 3], tonumber(ARGV[a + 3]))
      else
        id = pop_queued(KEYS[lane])
      end
      if id then
        local job = ARGV[6] .. id
        if rate > 0 and redis.call('INCR', KEYS[k + 2]) == 1 then
          redis.call('PEXPIRE', KEYS[k + 2], window)
        end
        local member = id .. ':' .. ARGV[4]
        redis.call('ZADD', KEYS[k + 3], now_ms + tonumber(ARGV[5]) * 1000, member)
        local stamp = ARGV[2] ~= '' and ARGV[2] or rq_time(t)
        redis.call('HSET', job, 'status', 'started', 'started_at', stamp, 'worker_name', ARGV[3],
          'last_heartbeat', stamp)
        redis.call('HSET', KEYS[1], 'state', 'busy', 'current_job', id, 'lease', member, 'lease_set', KEYS[k + 3])
        return {q + 1, member, redis.call('HMGET', job, unpack(fields))}
      end
    end
  end
end
return {0, wait}
