--[[ Seal a batch once all its jobs are created: from then on the end of its last job fires its callbacks (at
  once, when every job has ended already). Until then no end can fire them, however many jobs have ended.

  KEYS[1] batch hash      ARGV[1] batch id      ARGV[2] history stream cap (0: history is off)
  Returns the batch's state after: active, completed or failed ("" when there is no such batch).
]]
--#include flows
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'creating' then return state or '' end
local F, ended = flows(), {}
local clock = F.redis_clock(ARGV[2])
F.seal_batch(KEYS[1], ARGV[1], clock, ended)
for _, job in ipairs(ended) do F.settle(job[1], job[2], clock) end -- a canceled onSuccess: what waits for it
return redis.call('HGET', KEYS[1], 'state')
