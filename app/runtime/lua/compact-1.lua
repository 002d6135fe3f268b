--[[ Drop from a lane the ids whose job no longer exists (RQ's "compact", safe beside running workers: an id is
  removed only while its job is known to be gone, and nothing else in the lane moves).

  KEYS[1] lane list
  ARGV[1] job key prefix      ARGV[2] index of the first id to look at      ARGV[3] most ids to look at
  Returns {ids removed, ids looked at}.
]]
local first = tonumber(ARGV[2])
local ids = redis.call('LRANGE', KEYS[1], first, first + tonumber(ARGV[3]) - 1)
local removed = 0
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then
    removed = removed + redis.call('LREM', KEYS[1], 0, id)
  end
end
return {removed, #ids}
