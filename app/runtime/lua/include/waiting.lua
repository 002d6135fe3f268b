--[[ Where a job waits to be taken: its lane, or, a job of a group (option `group`), its group's list for its
  priority, the group joining that priority's ring (app.runtime.groups). Needs `keys`.
]]
--#include keys
-- A job's priority from its hash field: 1 (first) to 10, 5 when unset or unreadable.
local function priority_of(value)
  return math.min(10, math.max(1, tonumber(value or '5') or 5))
end

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

-- Take a waiting job out of where it waits; returns whether it was there.
local function take_waiting(queue, priority, id, group)
  local list = group and group ~= '' and key_of('group' .. priority, queue, group) or key_of('lane' .. priority, queue)
  return redis.call('LREM', list, 1, id) > 0
end
