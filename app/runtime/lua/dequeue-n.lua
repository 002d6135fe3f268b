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
  then 3 values per queue (after the fields): concurrency cap (0: none), rate-limit jobs, rate-limit window in ms
  Returns {queue number (1-based), started-set member, values of the fields asked for} for a job, else
  {0, ms until a rate limit frees a slot (-1: no limit is in the way)}.
]]
--#include rq_time
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
local wait = -1
for q = 0, queues - 1 do
  local k = 1 + q * 13
  local a = 8 + nfields + q * 3
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
    for lane = k + 4, k + 13 do
      local id = redis.call('LPOP', KEYS[lane])
      while id do
        local job = ARGV[6] .. id
        if redis.call('HGET', job, 'status') == 'queued' then
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
        id = redis.call('LPOP', KEYS[lane]) -- not a queued job's id: skip it
      end
    end
  end
end
return {0, wait}
