-- tasker_redis: the queue's scripts. Every change to more than one key is one script, so
-- a crash between its steps never leaves a task half moved.
--
-- This prelude is put before each script's one-line body (see _scripts.py). ARGV[1] is the
-- key prefix, "{namespace}:", ARGV[2] the history cap, ARGV[3] the packed arguments (or
-- '', the arguments then following as ARGV[4], ARGV[5], ...), and KEYS[1] one key of the
-- prefix (so that a cluster routes the call
-- to the namespace's slot: every key shares its hash tag). Names (queues, ids, unique keys)
-- arrive as arguments and are only ever joined to that prefix.
--
-- Keys (P is the prefix):
--   P t:<id>          hash: one task (field names as TaskRecord's; a missing field is None;
--                     lease_owner and lease_until count only while the state is running:
--                     a finish leaves them, rather than spend a command deleting them)
--   P r:<prio>:<q>    zset: queued tasks of queue q and priority prio, scored by run_at;
--                     members "<created_at, fixed width><id>" (FIFO among equal run_at)
--   P p:<q>           zset: the priorities that q has ready sets for
--   P l:<q>           zset: running tasks of q, scored by lease expiry
--   P h:<prio>:<q>    zset: held tasks of q and priority prio, scored by created_at
--   P hp:<q>          zset: the priorities that q has held sets for
--   P th:<id>         list: the task's history entry ids (its timeline)
--   P w:<q>           stream: one entry per change that may make work claimable in q
--   P u:<key>         string: the id of the task that last took the unique key
--   P g:<id>          hash: a group (size, done, and its callback's fields as c:<field>)
--   P gm:<id>         list: the group's member ids
--   P n               hash: task counts, field "<queue>\0<state>"
--   P all             zset: every task, scored by created_at (listings, newest first)
--   P exp             zset: succeeded tasks with a result expiry, scored by it
--   P dead            zset: dead tasks, scored by finished_at
--   P hist            stream: finished attempts, capped
--   P wk / P wx       hash / zset: the worker registry (entries; their expiries)
--
-- Times and priorities are passed as strings and stored as they came: a float never goes
-- through a Lua number on its way into a hash (Lua's tostring keeps 14 digits only).

local P = ARGV[1]
local HISTORY_CAP = tonumber(ARGV[2])

-- The arguments come packed in ARGV[3] as "<length>:<bytes>" items, one after the other,
-- from the driver (coredis: a few hundred arguments cost it more one by one than in one
-- string); from the queue's own connections (_wire.py), which send them cheaply, they
-- follow as they are (ARGV[3] is then '', and the server has split them already).
local ARGS, pos = ARGV, 4
if ARGV[3] ~= '' then
  ARGS, pos = {}, 1
  local blob, i, n = ARGV[3], 1, #ARGV[3]
  while i <= n do
    local colon = string.find(blob, ':', i, true)
    local length = tonumber(string.sub(blob, i, colon - 1))
    ARGS[#ARGS + 1] = string.sub(blob, colon + 1, colon + length)
    i = colon + length + 1
  end
end
local function arg()
  local value = ARGS[pos]
  pos = pos + 1
  return value
end

-- A task's record, as the client decodes it: these fields in this order (false if unset).
local RECORD = {'id', 'name', 'queue', 'payload', 'priority', 'run_at', 'state', 'attempts',
  'max_attempts', 'timeout', 'unique_key', 'created_at', 'lease_owner', 'lease_until',
  'result', 'result_expires', 'last_error', 'traceback', 'finished_at', 'chain', 'group_id',
  'group_index', 'trace'}
local R_STATE, R_ATTEMPTS, R_OWNER, R_UNTIL = 7, 8, 13, 14

local N, ALL, EXP, DEAD, HIST = P .. 'n', P .. 'all', P .. 'exp', P .. 'dead', P .. 'hist'
local function tkey(id) return P .. 't:' .. id end
local function rkey(prio, q) return P .. 'r:' .. prio .. ':' .. q end
local function pkey(q) return P .. 'p:' .. q end
local function lkey(q) return P .. 'l:' .. q end
local function hkey(prio, q) return P .. 'h:' .. prio .. ':' .. q end
local function hpkey(q) return P .. 'hp:' .. q end
local function thkey(id) return P .. 'th:' .. id end
local function wkey(q) return P .. 'w:' .. q end
local function ukey(k) return P .. 'u:' .. k end
local function gkey(g) return P .. 'g:' .. g end
local function gmkey(g) return P .. 'gm:' .. g end

local LIVE = {held = true, queued = true, running = true}
local WAKE = {}

-- Changes to counts and to sorted sets are collected and made once per key at the end of a
-- script (or before a claim reads the sets): a redis.call costs more than the command.
local COUNTS, ZADDS, ZREMS, READY_KEYS = {}, {}, {}, {}

local function count(q, state, delta)
  local field = q .. '\0' .. state
  COUNTS[field] = (COUNTS[field] or 0) + delta
end

local function zadd(key, score, member)
  local list = ZADDS[key]
  if not list then
    list = {}
    ZADDS[key] = list
  end
  list[#list + 1] = score
  list[#list + 1] = member
end

local function zrem(key, member)
  local list = ZREMS[key]
  if not list then
    list = {}
    ZREMS[key] = list
  end
  list[#list + 1] = member
end

local function call_chunked(command, key, list, step)
  for i = 1, #list, step do
    redis.call(command, key, unpack(list, i, math.min(i + step - 1, #list)))
  end
end

-- Make the collected set changes: removals first (no script removes and adds one member of
-- one set), then additions; a ready set left empty leaves its queue's priorities.
local function flush_sets()
  for key, list in pairs(ZREMS) do call_chunked('ZREM', key, list, 1000) end
  for key, list in pairs(ZADDS) do call_chunked('ZADD', key, list, 1000) end
  for key, where in pairs(READY_KEYS) do
    if ZREMS[key] and redis.call('ZCARD', key) == 0 then
      redis.call('ZREM', pkey(where[1]), where[2])
    end
  end
  ZADDS, ZREMS, READY_KEYS = {}, {}, {}
end

-- A record sent as "<n>" then n field/value pairs: the table, and the flat pairs (for HSET).
local function record_arg()
  local n = tonumber(arg())
  local t, flat = {}, {}
  for _ = 1, n do
    local field, value = arg(), arg()
    t[field] = value
    flat[#flat + 1] = field
    flat[#flat + 1] = value
  end
  return t, flat
end

-- A ready set's member: the enqueue time, fixed width, then the id, so that tasks due at the
-- same moment come out in the order they were enqueued (FIFO), not by id.
local MEMBER_ID = 21
local function member(created_at, id)
  return string.format('%020.6f', tonumber(created_at)) .. id
end

local function ready(id, q, prio, run_at, created_at)
  zadd(rkey(prio, q), run_at, member(created_at, id))
  zadd(pkey(q), prio, prio)
  WAKE[q] = true
end

-- The end of every script that changes tasks: the collected changes, then the wake-ups.
local function wake_all()
  flush_sets()
  for field, delta in pairs(COUNTS) do
    if delta ~= 0 then redis.call('HINCRBY', N, field, delta) end
  end
  COUNTS = {}
  for q in pairs(WAKE) do
    redis.call('XADD', wkey(q), 'MAXLEN', '~', 100, '*', 'e', '1')
  end
  WAKE = {}
end

-- Store a new task (its fields as sent: state "queued" or "held", attempts 0).
local function store(t, flat)
  redis.call('HSET', tkey(t.id), unpack(flat))
  zadd(ALL, t.created_at, t.id)
  count(t.queue, t.state, 1)
  if t.state == 'queued' then
    ready(t.id, t.queue, t.priority, t.run_at, t.created_at)
  else
    zadd(hkey(t.priority, t.queue), t.created_at, t.id)
    zadd(hpkey(t.queue), t.priority, t.priority)
  end
  if t.unique_key then
    redis.call('SET', ukey(t.unique_key), t.id)
  end
end

-- The task holding unique key k at now (live, or finished inside its window), or nil.
local function unique_holder(k, now)
  local holder = redis.call('GET', ukey(k))
  if not holder then return nil end
  local found = redis.call('HMGET', tkey(holder), 'state', 'unique_until')
  if not found[1] then return nil end
  if LIVE[found[1]] then return holder end
  if found[2] and tonumber(now) < tonumber(found[2]) then return holder end
  return nil
end

local function history(id, f, worker, started_at, finished_at, outcome, err)
  local entry = {'task_id', id, 'name', f.name, 'queue', f.queue, 'worker', worker,
    'attempt', f.attempts, 'started_at', started_at, 'finished_at', finished_at,
    'outcome', outcome}
  if err then
    entry[#entry + 1] = 'error'
    entry[#entry + 1] = err
  end
  local entry_id
  if HISTORY_CAP > 0 then
    entry_id = redis.call('XADD', HIST, 'MAXLEN', '~', HISTORY_CAP, '*', unpack(entry))
  else
    entry_id = redis.call('XADD', HIST, '*', unpack(entry))
  end
  redis.call('RPUSH', thkey(id), entry_id)  -- the task's own timeline
end

local TASK_FIELDS = {'state', 'queue', 'name', 'priority', 'run_at', 'attempts',
  'max_attempts', 'lease_owner', 'group_id', 'created_at', 'last_error', 'traceback'}

local function fields(id)
  local values = redis.call('HMGET', tkey(id), unpack(TASK_FIELDS))
  if not values[1] then return nil end
  local f = {}
  for i, name in ipairs(TASK_FIELDS) do
    if values[i] then f[name] = values[i] end
  end
  return f
end

local group_member_done

-- A task dies: its last attempt failed, or its lease expired on the last one.
local function die(id, f, err, traceback, finished_at, now)
  local key = tkey(id)
  if traceback then
    redis.call('HSET', key, 'state', 'dead', 'last_error', err, 'finished_at', finished_at,
      'traceback', traceback)
  else
    redis.call('HSET', key, 'state', 'dead', 'last_error', err, 'finished_at', finished_at)
    if f.traceback then redis.call('HDEL', key, 'traceback') end
  end
  zrem(lkey(f.queue), id)
  zadd(DEAD, finished_at, id)
  count(f.queue, f.state, -1)
  count(f.queue, 'dead', 1)
  group_member_done(f.group_id, now)
end

-- A group member reached succeeded or dead: when the last one does, the callback is
-- enqueued (due now) with the members' results in index order, exactly once.
group_member_done = function(gid, now)
  if not gid then return end
  local g = gkey(gid)
  if redis.call('EXISTS', g) == 0 then return end
  local done = redis.call('HINCRBY', g, 'done', 1)
  if done < tonumber(redis.call('HGET', g, 'size')) then return end
  local members = redis.call('LRANGE', gmkey(gid), 0, -1)
  local entries = {}
  for _, member in ipairs(members) do
    local m = redis.call('HMGET', tkey(member), 'group_index', 'state', 'result')
    local result = 'null'
    if m[2] == 'succeeded' and m[3] then result = m[3] end
    entries[#entries + 1] = {tonumber(m[1]) or 0, result}
  end
  table.sort(entries, function(a, b) return a[1] < b[1] end)
  local results = {}
  for i, entry in ipairs(entries) do results[i] = entry[2] end
  local spec = redis.call('HGETALL', g)
  local t, flat = {}, {}
  for i = 1, #spec, 2 do
    local name = spec[i]
    if string.sub(name, 1, 2) == 'c:' then
      name = string.sub(name, 3)
      t[name] = spec[i + 1]
      flat[#flat + 1] = name
      flat[#flat + 1] = spec[i + 1]
    end
  end
  redis.call('DEL', g, gmkey(gid))
  if t.id then
    t.payload, t.run_at, t.state = '[' .. table.concat(results, ',') .. ']', now, 'queued'
    for _, pair in ipairs({{'payload', t.payload}, {'run_at', now}, {'state', 'queued'},
        {'attempts', '0'}}) do
      flat[#flat + 1] = pair[1]
      flat[#flat + 1] = pair[2]
    end
    store(t, flat)
  end
end

-- Lease a task in state expected to worker: running, one more attempt; its record
-- (RECORD's fields), or nil if it is not in that state (a stale set entry: never leased).
-- (now_zadd: the lease set is written at once, for the expired-lease scan that reads it.)
local function lease(id, expected, worker, expiry, q, now_zadd)
  local key = tkey(id)
  local flat = redis.call('HMGET', key, unpack(RECORD))
  local state = flat[R_STATE]
  if state ~= expected then return nil end
  local attempts = tostring(tonumber(flat[R_ATTEMPTS] or '0') + 1)
  redis.call('HSET', key, 'state', 'running', 'attempts', attempts, 'lease_owner', worker,
    'lease_until', expiry)
  flat[R_STATE], flat[R_ATTEMPTS], flat[R_OWNER], flat[R_UNTIL] = 'running', attempts, worker,
    expiry
  if now_zadd then
    redis.call('ZADD', lkey(q), expiry, id)
  else
    zadd(lkey(q), expiry, id)
  end
  if state ~= 'running' then
    count(q, state, -1)
    count(q, 'running', 1)
  end
  return flat
end

local LEASE_EXPIRED = 'lease expired (the worker stopped responding)'

-- Claim up to limit tasks of queues: expired leases first (dead instead on their last
-- attempt), then queued tasks due by now, highest priority first, then oldest run_at.
local function claim(now, limit, worker, expiry, queues, exclude)
  flush_sets()
  local claimed = {}
  for _, q in ipairs(queues) do
    local skip = 0
    while #claimed < limit do
      local expired = redis.call('ZRANGE', lkey(q), '-inf', now, 'BYSCORE', 'LIMIT', skip,
        limit - #claimed)
      if #expired == 0 then break end
      for _, id in ipairs(expired) do
        if exclude[id] then
          skip = skip + 1
        else
          local f = fields(id)
          if not f or f.state ~= 'running' then
            redis.call('ZREM', lkey(q), id)
          elseif tonumber(f.attempts) >= tonumber(f.max_attempts) then
            die(id, f, LEASE_EXPIRED, nil, now, now)
          else
            claimed[#claimed + 1] = lease(id, 'running', worker, expiry, q, true)
          end
        end
      end
    end
  end
  if #claimed >= limit then return claimed end
  flush_sets()  -- a group callback that a death above enqueued may be claimed now
  -- The ready sets of every queue, highest priority first.
  local levels, by_prio = {}, {}
  for _, q in ipairs(queues) do
    local prios = redis.call('ZRANGE', pkey(q), 0, -1)
    for _, prio in ipairs(prios) do
      if not by_prio[prio] then
        by_prio[prio] = {}
        levels[#levels + 1] = prio
      end
      table.insert(by_prio[prio], q)
    end
  end
  table.sort(levels, function(a, b) return tonumber(a) > tonumber(b) end)
  for _, prio in ipairs(levels) do
    if #claimed >= limit then break end
    local candidates = {}
    local want = limit - #claimed
    local queues_here = by_prio[prio]
    for _, q in ipairs(queues_here) do
      local key = rkey(prio, q)
      -- The first want due entries not excluded: read want, then as many more as were
      -- excluded (an excluded task is rarely in a ready set: it runs here).
      local offset, need = 0, want
      while need > 0 do
        local due = redis.call('ZRANGE', key, '-inf', now, 'BYSCORE', 'LIMIT', offset, need,
          'WITHSCORES')
        local skipped = 0
        for i = 1, #due, 2 do
          local id = string.sub(due[i], MEMBER_ID)
          if exclude[id] then
            skipped = skipped + 1
          else
            candidates[#candidates + 1] = {tonumber(due[i + 1]), id, q, key, due[i]}
          end
        end
        if #due < 2 * need then break end
        offset, need = offset + need, skipped
      end
    end
    if #queues_here > 1 then  -- one set is in this order already
      table.sort(candidates, function(a, b)
        if a[1] ~= b[1] then return a[1] < b[1] end
        return a[5] < b[5]  -- the same run_at: the first enqueued first
      end)
    end
    for _, c in ipairs(candidates) do
      if #claimed >= limit then break end
      local id, q, key = c[2], c[3], c[4]
      zrem(key, c[5])
      READY_KEYS[key] = {q, prio}
      local record = lease(id, 'queued', worker, expiry, q, false)
      if record then claimed[#claimed + 1] = record end
    end
  end
  return claimed
end

-- Record one outcome (sent as a record, then its follow-ups) if its worker still holds the
-- task; otherwise (the lease was lost to a newer attempt) it changes nothing.
local function finish_one(now, o)
  local nfollow = tonumber(arg())
  local follow = {}
  for i = 1, nfollow do
    local t, flat = record_arg()
    follow[i] = {t, flat}
  end
  local id = o.id
  local f = fields(id)
  if not f or f.state ~= 'running' or f.lease_owner ~= o.worker then return end
  local kind = o.kind
  if kind ~= 'released' then
    history(id, f, o.worker, o.started_at, o.finished_at, kind, o.error)
  end
  local key = tkey(id)
  if kind == 'succeeded' then
    -- (A running task has no result: only a success sets one, and nothing follows it.)
    local set = {'state', 'succeeded', 'finished_at', o.finished_at}
    if o.result then
      set[#set + 1] = 'result'
      set[#set + 1] = o.result
    end
    if o.result_expires then
      set[#set + 1] = 'result_expires'
      set[#set + 1] = o.result_expires
      zadd(EXP, o.result_expires, id)
    end
    redis.call('HSET', key, unpack(set))
    if f.last_error or f.traceback then
      redis.call('HDEL', key, 'last_error', 'traceback')
    end
    zrem(lkey(f.queue), id)
    count(f.queue, 'running', -1)
    count(f.queue, 'succeeded', 1)
    for _, pair in ipairs(follow) do store(pair[1], pair[2]) end
    group_member_done(f.group_id, now)
  elseif kind == 'dead' then
    die(id, f, o.error or 'failed', o.traceback, o.finished_at, now)
  else
    local run_at = f.run_at
    if kind == 'retry' then
      if o.retry_at then run_at = o.retry_at end
      redis.call('HDEL', key, 'last_error', 'traceback')
      if o.error then redis.call('HSET', key, 'last_error', o.error) end
      if o.traceback then redis.call('HSET', key, 'traceback', o.traceback) end
    else
      redis.call('HINCRBY', key, 'attempts', -1)
    end
    redis.call('HSET', key, 'state', 'queued', 'run_at', run_at)
    zrem(lkey(f.queue), id)
    count(f.queue, 'running', -1)
    count(f.queue, 'queued', 1)
    ready(id, f.queue, f.priority, run_at, f.created_at)
  end
end

local function finish_all(now)
  local n = tonumber(arg())
  for _ = 1, n do
    local o = record_arg()
    finish_one(now, o)
  end
end

local function claim_args()
  local limit, worker, expiry = tonumber(arg()), arg(), arg()
  local queues = {}
  for i = 1, tonumber(arg()) do queues[i] = arg() end
  local exclude = {}
  for _ = 1, tonumber(arg()) do exclude[arg()] = true end
  return limit, worker, expiry, queues, exclude
end

-- The earliest run_at of a queued task or lease expiry of a running one in queues (or
-- false), then each queue's last wake-up entry id (for XREAD to wait after).
local function next_due(queues)
  local best = nil
  local best_text = false
  local function consider(entry)
    if entry[2] then
      local value = tonumber(entry[2])
      if best == nil or value < best then
        best, best_text = value, entry[2]
      end
    end
  end
  local ids = {}
  for i, q in ipairs(queues) do
    for _, prio in ipairs(redis.call('ZRANGE', pkey(q), 0, -1)) do
      consider(redis.call('ZRANGE', rkey(prio, q), 0, 0, 'WITHSCORES'))
    end
    consider(redis.call('ZRANGE', lkey(q), 0, 0, 'WITHSCORES'))
    local last = redis.call('XREVRANGE', wkey(q), '+', '-', 'COUNT', 1)
    if last[1] then ids[i] = last[1][1] else ids[i] = '0-0' end
  end
  return {best_text, ids}
end

-- The scripts' bodies (see _scripts.py) call these.

-- Store new tasks (and their group). A task whose id is stored already is deduplicated to
-- it and changes nothing (a caller-chosen id enqueued again), unless the stored task is
-- this very one (the same name, payload and created_at): then an earlier run of this same
-- enqueue stored it (the client sent it again after a lost reply). The script is atomic,
-- so that run stored the whole batch, group included, and this one changes nothing and
-- answers as it did.
local function enqueue_main()
  local now = arg()
  local out, ids = {}, {}
  local replay = false
  for i = 1, tonumber(arg()) do
    local t, flat = record_arg()
    local holder = nil
    local stored = redis.call('HMGET', tkey(t.id), 'created_at', 'name', 'payload')
    if stored[1] then
      if stored[1] == t.created_at and stored[2] == t.name and stored[3] == t.payload then
        replay = true
        out[i] = {t.id, 0}
      else
        out[i] = {t.id, 1}
      end
    else
      if t.unique_key then holder = unique_holder(t.unique_key, now) end
      if holder then
        out[i] = {holder, 1}
      elseif not replay then
        store(t, flat)
        out[i] = {t.id, 0}
      else
        out[i] = {t.id, 0}
      end
    end
    ids[i] = t.id
  end
  if arg() == '1' and not replay then
    local gid, size = arg(), arg()
    local _, callback = record_arg()
    local g = gkey(gid)
    local spec = {'size', size, 'done', 0}
    for i = 1, #callback, 2 do
      spec[#spec + 1] = 'c:' .. callback[i]
      spec[#spec + 1] = callback[i + 1]
    end
    redis.call('HSET', g, unpack(spec))
    call_chunked('RPUSH', gmkey(gid), ids, 1000)
  end
  wake_all()
  return out
end

local function claim_main(with_finish)
  local now = arg()
  if with_finish then finish_all(now) end
  local claimed = claim(now, claim_args())
  wake_all()
  return claimed
end

local function finish_main()
  finish_all(arg())
  wake_all()
  return 1
end

local function heartbeat_main()
  local worker, expiry = arg(), arg()
  local held = {}
  for i = pos, #ARGS do
    local id = ARGS[i]
    local v = redis.call('HMGET', tkey(id), 'state', 'lease_owner', 'queue')
    if v[1] == 'running' and v[2] == worker then
      redis.call('HSET', tkey(id), 'lease_until', expiry)
      redis.call('ZADD', lkey(v[3]), expiry, id)
      held[#held + 1] = id
    end
  end
  return held
end

local function rest()
  local values = {}
  for i = pos, #ARGS do values[#values + 1] = ARGS[i] end
  return values
end

-- Lease to worker those of the given ids that a claim could take at now (queued and due,
-- or running with an expired lease: dead instead on its last attempt), whatever their
-- queue, in the order given, each once. A queued task's ready-set entry goes with it (the
-- member is rebuilt from its fields), and its lease-set entry is what a claim finds next.
local function claim_ids_main()
  local worker, now, expiry = arg(), arg(), arg()
  local at = tonumber(now)
  local claimed, seen = {}, {}
  for i = pos, #ARGS do
    local id = ARGS[i]
    if not seen[id] then
      seen[id] = true
      local f = fields(id)
      if f and f.state == 'queued' and tonumber(f.run_at) <= at then
        local key = rkey(f.priority, f.queue)
        zrem(key, member(f.created_at, id))
        READY_KEYS[key] = {f.queue, f.priority}
        claimed[#claimed + 1] = lease(id, 'queued', worker, expiry, f.queue, false)
      elseif f and f.state == 'running' then
        local lease_until = redis.call('HGET', tkey(id), 'lease_until')
        if lease_until and tonumber(lease_until) <= at then
          if tonumber(f.attempts) >= tonumber(f.max_attempts) then
            die(id, f, LEASE_EXPIRED, nil, now, now)
            flush_sets()  -- a group callback it enqueued may be named further on
          else
            claimed[#claimed + 1] = lease(id, 'running', worker, expiry, f.queue, false)
          end
        end
      end
    end
  end
  wake_all()
  return claimed
end

-- Queued tasks due and running ones whose lease expired by before, of the given queues (none
-- given: every queue with a count in N), at most limit, the longest overdue first; read
-- only. Each ready and lease set is read in score order until it gives limit live entries
-- (an entry is live when its task is in that set's state with that score), so the merge of
-- those is the answer.
local function overdue_main()
  local before, limit = arg(), tonumber(arg())
  local queues = rest()
  if #queues == 0 then
    local known = {}
    for _, field in ipairs(redis.call('HKEYS', N)) do
      local q = string.match(field, '^(.*)%z')
      if q and not known[q] then
        known[q] = true
        queues[#queues + 1] = q
      end
    end
  end
  local found, listed = {}, {}
  local function scan(key, q, state, field, strip)
    local skip, live = 0, 0
    while live < limit do
      local entries = redis.call('ZRANGE', key, '-inf', before, 'BYSCORE', 'LIMIT', skip,
        limit, 'WITHSCORES')
      if #entries == 0 then return end
      for i = 1, #entries, 2 do
        local id = entries[i]
        if strip then id = string.sub(id, MEMBER_ID) end
        local score = tonumber(entries[i + 1])
        local v = redis.call('HMGET', tkey(id), 'state', 'queue', field)
        if not listed[id] and v[1] == state and v[2] == q and tonumber(v[3]) == score then
          listed[id] = true
          found[#found + 1] = {score, id}
          live = live + 1
        end
      end
      skip = skip + #entries / 2
    end
  end
  for _, q in ipairs(queues) do
    for _, prio in ipairs(redis.call('ZRANGE', pkey(q), 0, -1)) do
      scan(rkey(prio, q), q, 'queued', 'run_at', true)
    end
    scan(lkey(q), q, 'running', 'lease_until', false)
  end
  table.sort(found, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
  local out = {}
  for i = 1, math.min(limit, #found) do
    out[i] = redis.call('HMGET', tkey(found[i][2]), unpack(RECORD))
  end
  return out
end

local function next_due_main()
  return next_due(rest())
end

-- A dead task back in its queue with its attempts reset (1), or 0: not dead, or a newer
-- live task holds its unique key.
local function requeue_main()
  local id, now = arg(), arg()
  local f = fields(id)
  if not f or f.state ~= 'dead' then return 0 end
  local key = tkey(id)
  local k = redis.call('HGET', key, 'unique_key')
  if k then
    local holder = redis.call('GET', ukey(k))
    if holder and holder ~= id then
      local state = redis.call('HGET', tkey(holder), 'state')
      if state and LIVE[state] then return 0 end
    end
    redis.call('SET', ukey(k), id)
    redis.call('HDEL', key, 'unique_until')
  end
  redis.call('HSET', key, 'state', 'queued', 'attempts', 0, 'run_at', now)
  redis.call('HDEL', key, 'finished_at')
  redis.call('ZREM', DEAD, id)
  count(f.queue, 'dead', -1)
  count(f.queue, 'queued', 1)
  if f.group_id and redis.call('EXISTS', gkey(f.group_id)) == 1 then
    redis.call('HINCRBY', gkey(f.group_id), 'done', -1)
  end
  ready(id, f.queue, f.priority, now, f.created_at)
  wake_all()
  return 1
end

-- Release held tasks of a queue (of one name when given), highest priority first, then the
-- oldest; due at once unless their run_at is later. Held tasks wait in one set per priority
-- by enqueue time, so a dispatch reads what it releases (and, with a name, the held tasks
-- of other names it passes on the way), not the whole backlog.
local function dispatch_main()
  local q, name, limit, now = arg(), arg(), tonumber(arg()), arg()
  local levels = redis.call('ZRANGE', hpkey(q), 0, -1)
  table.sort(levels, function(a, b) return tonumber(a) > tonumber(b) end)
  local released = 0
  for _, prio in ipairs(levels) do
    local key = hkey(prio, q)
    local start = 0
    while limit < 0 or released < limit do
      local ids = redis.call('ZRANGE', key, start, start + 199)
      if #ids == 0 then break end
      local moved = 0
      for _, id in ipairs(ids) do
        if limit >= 0 and released >= limit then break end
        local v = redis.call('HMGET', tkey(id), 'name', 'run_at', 'state', 'created_at')
        if v[3] ~= 'held' then
          redis.call('ZREM', key, id)  -- stale
          moved = moved + 1
        elseif name == '' or v[1] == name then
          local run_at = v[2]
          if tonumber(now) < tonumber(run_at) then run_at = now end
          redis.call('HSET', tkey(id), 'state', 'queued', 'run_at', run_at)
          redis.call('ZREM', key, id)
          count(q, 'held', -1)
          count(q, 'queued', 1)
          ready(id, q, prio, run_at, v[4])
          released = released + 1
          moved = moved + 1
        end
      end
      start = start + #ids - moved
    end
    if redis.call('ZCARD', key) == 0 then redis.call('ZREM', hpkey(q), prio) end
    if limit >= 0 and released >= limit then break end
  end
  wake_all()
  return released
end

local function delete_task(id)
  local key = tkey(id)
  local v = redis.call('HMGET', key, 'queue', 'state', 'unique_key')
  if v[3] and redis.call('GET', ukey(v[3])) == id then redis.call('DEL', ukey(v[3])) end
  redis.call('DEL', key, thkey(id))
  redis.call('ZREM', ALL, id)
  redis.call('ZREM', EXP, id)
  redis.call('ZREM', DEAD, id)
  if v[1] then count(v[1], v[2], -1) end
end

-- Whether retention must keep a finished task: its unique window is open, or it is a member
-- of a group whose callback has not run.
local function kept(id, now)
  local v = redis.call('HMGET', tkey(id), 'unique_key', 'unique_until', 'group_id')
  if v[1] and v[2] and redis.call('GET', ukey(v[1])) == id
      and tonumber(v[2]) > tonumber(now) then
    return true
  end
  return v[3] and redis.call('EXISTS', gkey(v[3])) == 1
end

local PURGE_CHUNK = 500

-- One chunk of retention: {tasks deleted, whether there is more to do}.
local function purge_main()
  local now, history_before, dead_before = arg(), arg(), arg()
  local deleted, more = 0, 0
  local function sweep(index, state, upto)
    local skip = 0
    while true do
      local ids = redis.call('ZRANGE', index, '-inf', upto, 'BYSCORE', 'LIMIT', skip, 100)
      if #ids == 0 then return end
      for _, id in ipairs(ids) do
        if redis.call('HGET', tkey(id), 'state') ~= state then
          redis.call('ZREM', index, id)
        elseif kept(id, now) then
          skip = skip + 1
        else
          delete_task(id)
          deleted = deleted + 1
        end
      end
      if deleted >= PURGE_CHUNK then
        more = 1
        return
      end
    end
  end
  sweep(EXP, 'succeeded', now)
  if dead_before ~= '' and more == 0 then sweep(DEAD, 'dead', '(' .. dead_before) end
  if history_before ~= '' and more == 0 then
    local cutoff = tonumber(history_before)
    local horizon = (cutoff + 3600) * 1000
    local start = '-'
    local removed = 0
    while true do
      local entries = redis.call('XRANGE', HIST, start, '+', 'COUNT', 200)
      if #entries == 0 then break end
      local before = removed
      for _, entry in ipairs(entries) do
        local values = entry[2]
        for i = 1, #values, 2 do
          if values[i] == 'finished_at' then
            if tonumber(values[i + 1]) < cutoff then
              redis.call('XDEL', HIST, entry[1])
              removed = removed + 1
            end
            break
          end
        end
      end
      local last = entries[#entries][1]
      local ms = tonumber(string.match(last, '^(%d+)'))
      if removed == before and ms > horizon then break end
      start = '(' .. last
      if removed >= PURGE_CHUNK then
        more = 1
        break
      end
    end
  end
  wake_all()  -- the counts of what was deleted
  return {deleted, more}
end

-- Tasks newest first, of one state and queue when given ('' for any), as records.
local function tasks_main()
  local state, q, limit = arg(), arg(), tonumber(arg())
  local found = {}
  local start = 0
  while #found < limit do
    local ids = redis.call('ZREVRANGE', ALL, start, start + 199)
    if #ids == 0 then break end
    for _, id in ipairs(ids) do
      local v = redis.call('HMGET', tkey(id), 'state', 'queue')
      if v[1] and (state == '' or v[1] == state) and (q == '' or v[2] == q) then
        found[#found + 1] = redis.call('HMGET', tkey(id), unpack(RECORD))
        if #found >= limit then break end
      end
    end
    start = start + 200
  end
  return found
end

-- Finished attempts newest first (of one task when given), as field/value arrays.
local function history_main()
  local id, limit = arg(), tonumber(arg())
  local found = {}
  if id ~= '' then  -- the task's own timeline, newest first (entries trimmed since: gone)
    local ids = redis.call('LRANGE', thkey(id), 0, -1)
    for i = #ids, 1, -1 do
      local entry = redis.call('XRANGE', HIST, ids[i], ids[i])
      if entry[1] then
        found[#found + 1] = entry[1][2]
        if #found >= limit then break end
      end
    end
    return found
  end
  local start = '+'
  while #found < limit do
    local entries = redis.call('XREVRANGE', HIST, start, '-', 'COUNT', 500)
    if #entries == 0 then break end
    for _, entry in ipairs(entries) do
      local values = entry[2]
      if id == '' or values[2] == id then
        found[#found + 1] = values
        if #found >= limit then break end
      end
    end
    start = '(' .. entries[#entries][1]
  end
  return found
end

local function worker_seen_main()
  local id, info, expires_at = arg(), arg(), arg()
  redis.call('HSET', P .. 'wk', id, info)
  redis.call('ZADD', P .. 'wx', expires_at, id)
  return 1
end

local function worker_gone_main()
  local id = arg()
  redis.call('HDEL', P .. 'wk', id)
  redis.call('ZREM', P .. 'wx', id)
  return 1
end

local function workers_main()
  local now = arg()
  local wk, wx = P .. 'wk', P .. 'wx'
  while true do  -- the expired entries, a thousand at a time
    local gone = redis.call('ZRANGE', wx, '-inf', now, 'BYSCORE', 'LIMIT', 0, 1000)
    if #gone == 0 then break end
    redis.call('HDEL', wk, unpack(gone))
    redis.call('ZREM', wx, unpack(gone))
  end
  local ids = redis.call('ZRANGE', wx, '(' .. now, '+inf', 'BYSCORE')
  local found = {}
  for i = 1, #ids, 1000 do
    local values = redis.call('HMGET', wk, unpack(ids, i, math.min(i + 999, #ids)))
    for j = 1, #values do found[#found + 1] = values[j] end
  end
  return found
end
