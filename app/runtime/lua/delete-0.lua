--[[ Delete ended or taken-out jobs with their results, freeing each one's dedup key only while it still holds it
  (a later job may have taken the key since: it keeps it).

  ARGV[1] job key prefix      ARGV[2] results key prefix      ARGV[3..] job ids
  Returns the number of job hashes deleted.
]]
local deleted = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local job = ARGV[1] .. id
  local dedup = redis.call('HGET', job, 'dedup_key')
  if dedup and redis.call('GET', dedup) == id then redis.call('DEL', dedup) end
  deleted = deleted + redis.call('DEL', job)
  redis.call('DEL', ARGV[2] .. id)
end
return deleted
