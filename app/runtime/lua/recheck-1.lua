--[[ Look again at the jobs of a queue that have waited deferred a while, against what exists now: a parent's or a
  batch's end may have gone unseen by the job path (a parent's hash deleted by RQ's own tools or evicted, a batch
  whose creator died before sealing it). Each is worked out again as enqueue works it out: released when every
  parent completed (a callback: when its batch ended), ended by its on_parent_failure when a parent failed, was
  canceled or is gone, else left to wait (and looked at again ARGV[2] seconds later).

  KEYS[1] the queue's deferred zset (scored by when the job was last looked at)
  ARGV[1] most jobs to look at   ARGV[2] seconds between looks at a job   ARGV[3] history stream cap
  ARGV[4] seconds after which a batch still being created is taken for abandoned by its creator (then sealed)
  Returns the number of jobs released or ended.
]]
--#include flows
local F = flows()
local end_unrun, settle, seal_batch, release = F.end_unrun, F.settle, F.seal_batch, F.release
local clock = F.redis_clock(ARGV[3])
local gone = {failed = true, canceled = true, stopped = true}
local moved = 0
local function looked_at(id) redis.call('ZADD', KEYS[1], 'XX', clock.now, id) end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', clock.now - tonumber(ARGV[2]), 'LIMIT', 0,
    tonumber(ARGV[1]))) do
  local job = key_of('job', id)
  local f = redis.call('HMGET', job, 'status', 'dependency_ids', 'callback_of', 'on_parent_failure')
  if f[1] ~= 'deferred' then
    redis.call('ZREM', KEYS[1], id) -- not waiting any more (or gone): a stale entry
  elseif f[3] then
    local batch = key_of('batch', f[3])
    local b = redis.call('HMGET', batch, 'state', 'created_at')
    if not b[1] then
      end_unrun(id, 'canceled', clock, 'BatchGone', 'its batch ' .. f[3] .. ' is gone')
      settle(id, 'canceled', clock)
      moved = moved + 1
    elseif b[1] == 'creating' and clock.now - (tonumber(b[2]) or 0) > tonumber(ARGV[4]) then
      local ended = {}
      seal_batch(batch, f[3], clock, ended)
      for _, e in ipairs(ended) do settle(e[1], e[2], clock) end
      moved = moved + 1
    else
      looked_at(id)
    end
  else
    local pending, failed = 0, nil
    for _, parent in ipairs(cjson.decode(f[2] or '[]')) do
      local status = redis.call('HGET', key_of('job', parent), 'status')
      if not status or gone[status] then
        if f[4] ~= 'ignore' and not failed then failed = {parent, status or 'gone'} end
      elseif status ~= 'finished' then
        pending = pending + 1
      end
    end
    if failed then
      local status = f[4] == 'cancel' and 'canceled' or 'failed'
      end_unrun(id, status, clock, 'ParentFailed', 'parent ' .. failed[1] .. ' ' .. failed[2])
      settle(id, status, clock)
      moved = moved + 1
    elseif pending == 0 then
      release(id, clock)
      moved = moved + 1
    else
      redis.call('HSET', job, 'deps_pending', pending)
      looked_at(id)
    end
  end
end
return moved
