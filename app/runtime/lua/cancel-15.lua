--[[ Cancel a job that waits (in a lane) or is delayed (in the scheduled set). A running job is left to its
  worker, which the caller tells to stop it.

  KEYS[1] job hash        KEYS[2] scheduled zset      KEYS[3] canceled zset     KEYS[4] stats hash
  KEYS[5..14] lanes of priority 1..10                    KEYS[15] history stream
  ARGV[1] job id          ARGV[2] now, epoch seconds  ARGV[3] now, RQ's format  ARGV[4] seconds to keep the job
  ARGV[5] history stream cap (0: history is off)
  Returns "canceled", or the job's status when it was neither waiting nor delayed ("" when it does not exist).
  A running job is marked `cancel_requested`: its worker stops it, and if that worker is dead, the job is
  canceled when recovered instead of run again.
]]
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '' end
local removed = 0
if status == 'queued' then
  for lane = 5, 14 do
    removed = redis.call('LREM', KEYS[lane], 1, ARGV[1])
    if removed > 0 then break end
  end
elseif status == 'scheduled' then
  removed = redis.call('ZREM', KEYS[2], ARGV[1])
elseif status == 'started' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
end
if removed == 0 then return status end
redis.call('HSET', KEYS[1], 'status', 'canceled', 'ended_at', ARGV[3])
redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + tonumber(ARGV[4]), ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('HINCRBY', KEYS[4], 'canceled', 1)
if ARGV[5] ~= '0' then
  local f = redis.call('HMGET', KEYS[1], 'attempts', 'retries_left', 'origin', 'description', 'enqueued_at',
    'schedule_id', 'earlier_attempts', 'schedule_slot')
  local row = {job_id = ARGV[1],
    attempt = (tonumber(f[7]) or 0) + math.max(1, (tonumber(f[1]) or 1) - (tonumber(f[2]) or 0)),
    queue = f[3] or nil, task = f[4] and string.match(f[4], '^([^(]+)') or '?', status = 'canceled',
    enqueued_at = f[5] or nil, schedule_id = f[6] or nil, started_at = tonumber(ARGV[2]), ended_at = tonumber(ARGV[2]),
    schedule_slot = f[8] or nil, trigger = f[6] and (f[8] and 'cron' or 'run_now') or nil}
  redis.call('XADD', KEYS[15], 'MAXLEN', '~', ARGV[5], '*', 'row', cjson.encode(row))
end
local dedup = redis.call('HGET', KEYS[1], 'dedup_key')
if dedup and redis.call('GET', dedup) == ARGV[1] then redis.call('DEL', dedup) end
return 'canceled'
