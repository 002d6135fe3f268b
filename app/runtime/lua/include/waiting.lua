--[[ Where a job waits to be taken: its lane, or, a job of a group (option `group`), its group's list for its
  priority, the group joining that priority's ring (app.runtime.groups). Needs `keys`.
]]
--#include keys
local function push_waiting(queue, priority, id, group, front)
  local list
  if group and group ~= '' then
    list = key_of('group' .. priority, queue, group)
    local ring = key_of('ring' .. priority, queue)
    if not redis.call('ZSCORE', ring, group) then
      redis.call('ZADD', ring, redis.call('INCR', key_of('turn', queue)), group)
    end
  else
    list = key_of('lane' .. priority, queue)
  end
  redis.call(front and 'LPUSH' or 'RPUSH', list, id)
  return list
end
