--[[ Delete ended or taken-out jobs with their results, freeing each one's dedup key only while it still holds it
  (a later job may have taken the key since: it keeps it). A job deleted before it ended counts as canceled for
  the jobs that wait for it and for its batch (flows).

  ARGV[1] job key prefix      ARGV[2] results key prefix      ARGV[3] history stream cap (0: history is off)
  ARGV[4..] job ids
  A job found running is left alone (a worker took it after its id was taken out of one of two places).
  Returns the number of job hashes deleted.
]]
--#include flows
local pending = {queued = true, scheduled = true, deferred = true, created = true}
local clock
local deleted = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local job = ARGV[1] .. id
  local f = redis.call('HMGET', job, 'dedup_key', 'status', 'origin')
  if f[2] ~= 'started' then -- a worker took it meanwhile (its id was in two places): it is the worker's
    if f[1] and redis.call('GET', f[1]) == id then redis.call('DEL', f[1]) end
    if pending[f[2]] then
      if f[2] == 'deferred' then redis.call('ZREM', key_of('deferred', f[3]), id) end
      clock = clock or flows().redis_clock(ARGV[3])
      flows().settle(id, 'canceled', clock)
    end
    deleted = deleted + redis.call('DEL', job)
    redis.call('DEL', ARGV[2] .. id)
  end
end
return deleted
