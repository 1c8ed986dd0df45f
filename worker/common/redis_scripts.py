"""The Lua scripts the store runs, each one atomic in Redis (keys: worker/common/keys.py)."""

# KEYS: index, todo:sentiment, unpublished, status:pending, then every other status set, then the rec:
# and conv: prefixes. ARGV: [ttl, replace, conversation keep, todo keep, now] as JSON, then per message its id,
# record JSON, seq and conversation id. Returns 1 per message created (or replaced), 0 per duplicate.
ADD_SCRIPT = """
local opts = cjson.decode(ARGV[1])
local ttl, replace, keep, todo_keep, now = opts[1], opts[2], opts[3], opts[4], opts[5]
local out = {}
for i = 2, #ARGV, 4 do
  local id, body, seq, cid = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key = KEYS[#KEYS - 1] .. id
  if replace == 0 and redis.call('EXISTS', key) == 1 then
    table.insert(out, 0)
  else
    if ttl > 0 then redis.call('SET', key, body, 'EX', ttl) else redis.call('SET', key, body) end
    redis.call('ZADD', KEYS[1], seq, id)
    for s = 5, #KEYS - 2 do redis.call('SREM', KEYS[s], id) end
    redis.call('SADD', KEYS[4], id)
    redis.call('ZADD', KEYS[2], seq, id)
    redis.call('ZADD', KEYS[3], now, id)
    if cid ~= '' then
      local conv = KEYS[#KEYS] .. cid
      redis.call('ZADD', conv, seq, id)
      redis.call('ZREMRANGEBYRANK', conv, 0, -keep - 1)
      if ttl > 0 then redis.call('EXPIRE', conv, ttl) end
    end
    table.insert(out, 1)
  end
end
redis.call('ZREMRANGEBYRANK', KEYS[2], todo_keep, -1)
return out
"""


# KEYS: todo:<stage>. ARGV: the lease key prefix, lease milliseconds, the holder, then ids. Removes each id from
# the waiting list and takes the ones this call removed that nobody holds (a message's own task leases it when
# it starts), leasing them to the holder in the same step. Returns the ids taken.
TAKE_LEASED_SCRIPT = """
local taken = {}
for i = 4, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1
      and redis.call('SET', ARGV[1] .. ARGV[i], ARGV[3], 'PX', ARGV[2], 'NX') then
    table.insert(taken, ARGV[i])
  end
end
return taken
"""


# KEYS: unpublished. ARGV: cutoff time, now, limit. Returns ids marked before the cutoff and renews
# their marks to now in the same step, so two sweepers never take the same id.
TAKE_SCRIPT = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""


# KEYS: one status set or sorted set. ARGV: the record key prefix, 1 for a set (0 for a sorted set), then
# ids. Removes the ids whose record no longer exists, checking and removing in one step (an id added
# again meanwhile keeps its place). Returns how many it removed.
PRUNE_SCRIPT = """
local removed = 0
for i = 3, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then
    if ARGV[2] == '1' then
      removed = removed + redis.call('SREM', KEYS[1], ARGV[i])
    else
      removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
    end
  end
end
return removed
"""
