"""The Lua the shared engine runs: storage steps only, never a rule.

The rules of sessions run in Python (``sessiond.rules``), on records read
from the engine; what they decide reaches the engine as final states and
the index entries, counters and events that go with them. A script only
checks that every record is still at the version it was read at (compare
and set), and writes. So a script touches only keys of one namespace,
all in one hash slot (their names carry the namespace as a hash tag):
passed in KEYS, or made from the key prefix for records a scan finds.

Numbers are passed and stored as decimal text; Lua compares versions as
text (they may pass 2^53), and uses numbers only for scores and counts.
"""

from __future__ import annotations

from typing import Final

from sessiond.shared.hashes import READ

# A session's fields as a read takes them (``hashes.READ``, in its order):
# the arguments of an HMGET inside a script.
_READ = ", ".join(f"'{name}'" for name in READ)

# KEYS: the order's bucket prefix, due, purge, users, counters, events, then
# the records' keys. (The order: ``sd:{NS}:o:<seq // 128>``, each a hash of
# sequence number -> id: a hash of that few fields is packed by the engine,
# a fraction of what a sorted set costs a member.)
# ARGV: maxlen, origin (the daemon's mark on its events), groups, then each
# group (one request's changes, applied all or none): its records, each as
#   key index, sid, expected version and place in creation order as
#   "VERSION/SEQ" (``hashes.expected``; "VERSION/" for a record an earlier
#   group made; "-": absent), then "0" (removed) or
#   "1", the fields to set (a count, then names and values), the fields to
#   remove (a count, then names), the index to enter it in and the one to
#   take it out of ("d" due, "p" purge, "-" none), and its score there
#   (``hashes.record_args``: only what changed is sent),
# then the counter deltas (total, active, ttl_sum, expiries, purges), the
# users' deltas, and the events (kind, sid, at, user, session).
# A group whose records are not as expected is not applied (0); neither is
# a later group that touches one of its records (their state was computed
# on top of it). Returns each group's 1 or 0. A record costs one HSET and
# at most one HDEL; a counter is moved once a script, when it changes.
# A key that would make a write fail (changed outside sessiond: a counter
# or user count that is not a whole number, a key of the wrong type) refuses
# the whole script before its first write, with an error reply "DAMAGED
# <key> <what>": the engine keeps the writes a script made before a command
# failed, so a failure midway would leave half a request. Those checks cost
# the script the users' HMGET and a TYPE of each other key it writes; the
# counters' and the records' reads are made anyway.
COMMIT: Final = """
local order, due, purge = KEYS[1], KEYS[2], KEYS[3]
local users, counters, events = KEYS[4], KEYS[5], KEYS[6]
local maxlen, origin = ARGV[1], ARGV[2]
local pos = 4
local results = {}
local poisoned = {}
local INDEX = {d = due, p = purge}
-- Counters are moved once a script, by what every group applied added up:
-- seq and events numbered from their value at the start.
local NAMES = {'total', 'active', 'ttl_sum', 'expiries', 'purges', 'seq', 'events'}
local moved = {0, 0, 0, 0, 0}
local people, by = {}, {}
local start = redis.pcall('HMGET', counters, unpack(NAMES))
if start.err then return redis.error_reply('DAMAGED ' .. counters .. ' is not a hash') end
local seq0, seq = tonumber(start[6] or '0'), tonumber(start[6] or '0')
local number0, number = tonumber(start[7] or '0'), tonumber(start[7] or '0')
-- Where the record at p ends.
local function past(p)
  if ARGV[p + 3] == '0' then return p + 4 end
  local q = p + 5 + 2 * tonumber(ARGV[p + 4])
  return q + tonumber(ARGV[q]) + 4
end
-- What HINCRBY takes (a value that fits in 64 bits, with room to add).
local function whole(x)
  return not x or x == '0' or (#x <= 18 and string.match(x, '^%-?[1-9]%d*$') ~= nil)
end
-- The checks before the first write: what every group would write.
local function damaged()
  local wants, counts, names, creates = {}, {}, {}, 0
  local was = {}
  for k = 7, #KEYS do
    local r = redis.pcall('HMGET', KEYS[k], 'v', 'q')
    if r.err then return KEYS[k] .. ' is not a hash' end
    if not whole(r[2]) then
      return KEYS[k] .. ' holds something other than a whole number in the field q'
    end
    was[KEYS[k]] = r
  end
  local p = 4
  for g = 1, tonumber(ARGV[3]) do
    local n = tonumber(ARGV[p]); p = p + 1
    for r = 1, n do
      local key = KEYS[tonumber(ARGV[p])]
      if ARGV[p + 3] == '0' then
        wants[due] = 'zset'; wants[purge] = 'zset'
        local q = was[key][2]
        if q then wants[order .. math.floor(tonumber(q) / 128)] = 'hash' end
      else
        if ARGV[p + 2] == '-' then creates = creates + 1 end
        local q = p + 5 + 2 * tonumber(ARGV[p + 4])
        local into, out = ARGV[q + tonumber(ARGV[q]) + 1], ARGV[q + tonumber(ARGV[q]) + 2]
        if into ~= '-' then wants[INDEX[into]] = 'zset' end
        if out ~= '-' then wants[INDEX[out]] = 'zset' end
      end
      p = past(p)
    end
    for c = 1, 5 do
      if tonumber(ARGV[p + c - 1]) ~= 0 then counts[c] = true end
    end
    local nusers = tonumber(ARGV[p + 5])
    for u = 1, nusers do names[#names + 1] = ARGV[p + 4 + 2 * u] end
    local nevents = tonumber(ARGV[p + 6 + 2 * nusers])
    if nevents > 0 then counts[7] = true; wants[events] = 'stream' end
    p = p + 7 + 2 * nusers + 5 * nevents
  end
  if creates > 0 then counts[6] = true end
  for c = 1, 7 do
    if counts[c] and not whole(start[c]) then
      return counters .. ' holds something other than a whole number in the field ' .. NAMES[c]
    end
  end
  if creates > 0 then
    for b = math.floor((seq0 + 1) / 128), math.floor((seq0 + creates) / 128) do
      wants[order .. b] = 'hash'
    end
  end
  if #names > 0 then
    local held = redis.pcall('HMGET', users, unpack(names))
    if held.err then return users .. ' is not a hash' end
    for u = 1, #names do
      if not whole(held[u]) then
        return users .. ' holds something other than a whole number in the field ' .. names[u]
      end
    end
  end
  for key, kind in pairs(wants) do
    local is = redis.call('TYPE', key).ok
    if is ~= kind and is ~= 'none' then return key .. ' is a ' .. is .. ', not a ' .. kind end
  end
  return false, was
end
local bad, was = damaged()
if bad then return redis.error_reply('DAMAGED ' .. bad) end
for g = 1, tonumber(ARGV[3]) do
  local n = tonumber(ARGV[pos]); pos = pos + 1
  local first = pos
  local ok = true
  local p = pos
  for r = 1, n do
    local key = KEYS[tonumber(ARGV[p])]
    local expect = ARGV[p + 2]
    -- Read before the first write; read again once a group wrote it.
    local r = was[key] or redis.call('HMGET', key, 'v', 'q')
    -- The version and the place in creation order: versions start again
    -- at 1 when an id is deleted and made again, places never come again
    -- (but after the engine lost the writes that gave them: the counter
    -- goes back with them, and the same id would have to be made again at
    -- the same place between a batch's read and its commit).
    -- (No place is expected of a record an earlier group of this script
    -- made: its place was not known when the groups were built.)
    local version, place = string.match(expect, '^([^/]*)/(.*)$')
    if poisoned[key] or (expect == '-' and r[1])
        or (expect ~= '-' and (r[1] ~= version or (place ~= '' and r[2] ~= place))) then
      ok = false
    end
    p = past(p)
  end
  local tail = p
  local nusers = tonumber(ARGV[tail + 5])
  local nevents = tonumber(ARGV[tail + 6 + 2 * nusers])
  local after = tail + 7 + 2 * nusers + 5 * nevents
  if not ok then
    p = first
    for r = 1, n do
      poisoned[KEYS[tonumber(ARGV[p])]] = true
      p = past(p)
    end
    results[g] = 0
  else
    p = first
    for r = 1, n do
      local key, sid, expect = KEYS[tonumber(ARGV[p])], ARGV[p + 1], ARGV[p + 2]
      was[key] = nil
      if ARGV[p + 3] == '0' then
        local seq = redis.call('HGET', key, 'q')
        if seq then redis.call('HDEL', order .. math.floor(tonumber(seq) / 128), seq) end
        redis.call('DEL', key)
        redis.call('ZREM', due, sid)
        redis.call('ZREM', purge, sid)
      else
        local nset = tonumber(ARGV[p + 4])
        local put = {}
        for i = 1, 2 * nset do put[i] = ARGV[p + 4 + i] end
        if expect == '-' then
          seq = seq + 1
          put[#put + 1] = 'q'; put[#put + 1] = seq
          redis.call('HSET', order .. math.floor(seq / 128), seq, sid)
        end
        if #put > 0 then redis.call('HSET', key, unpack(put)) end
        local q = p + 5 + 2 * nset
        local ndel = tonumber(ARGV[q])
        if ndel > 0 then redis.call('HDEL', key, unpack(ARGV, q + 1, q + ndel)) end
        local into, out, score = ARGV[q + ndel + 1], ARGV[q + ndel + 2], ARGV[q + ndel + 3]
        if into ~= '-' then redis.call('ZADD', INDEX[into], score, sid) end
        if out ~= '-' then redis.call('ZREM', INDEX[out], sid) end
      end
      p = past(p)
    end
    for c = 1, 5 do moved[c] = moved[c] + tonumber(ARGV[tail + c - 1]) end
    p = tail + 6
    for u = 1, nusers do
      local who = ARGV[p]
      if not by[who] then by[who] = 0; people[#people + 1] = who end
      by[who] = by[who] + tonumber(ARGV[p + 1])
      p = p + 2
    end
    p = p + 1
    for e = 1, nevents do
      number = number + 1
      redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'n', number,
                 'k', ARGV[p], 's', ARGV[p + 1], 'a', ARGV[p + 2], 'u', ARGV[p + 3],
                 'r', ARGV[p + 4], 'o', origin)
      p = p + 5
    end
    results[g] = 1
  end
  pos = after
end
for c = 1, 5 do
  if moved[c] ~= 0 then redis.call('HINCRBY', counters, NAMES[c], moved[c]) end
end
if seq ~= seq0 then redis.call('HINCRBY', counters, 'seq', seq - seq0) end
if number ~= number0 then redis.call('HINCRBY', counters, 'events', number - number0) end
for _, who in ipairs(people) do
  if by[who] ~= 0 then
    local left = redis.call('HINCRBY', users, who, by[who])
    if left <= 0 then redis.call('HDEL', users, who) end
  end
end
return results
"""

# Records in creation order after a sequence number: KEYS the order's
# bucket prefix, counters; ARGV the records' key prefix, the sequence
# number after which to start, how many records of ``user`` ("": any) to
# return, how many to look at at most (and buckets to walk, empty ones
# left by removals included). Returns the last sequence number looked at
# (past a bucket walked to its end, that bucket's last), whether any
# record may follow it, then each record as its id, its sequence number
# and HMGET of READ. A key that is no hash (set outside sessiond) answers
# its type in place of the fields, for the daemon to pass over and name,
# whoever's it is: which user's it was cannot be told. Last, the highest
# sequence number given (which only grows, unless the engine lost some).
PAGE: Final = """
local prefix, after, user = ARGV[1], tonumber(ARGV[2]), ARGV[5]
local want, most = tonumber(ARGV[3]), tonumber(ARGV[4])
local top = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
local out = {}
local found, looked, last, more = 0, 0, after, 0
local bucket = math.floor(after / 128)
local walked = 0
while more == 0 and bucket * 128 <= top do
  if walked >= most then more = 1; break end
  walked = walked + 1
  local flat = redis.call('HGETALL', KEYS[1] .. bucket)
  local seqs, ids = {}, {}
  for i = 1, #flat, 2 do
    local q = tonumber(flat[i])
    if q > after then seqs[#seqs + 1] = q; ids[q] = flat[i + 1] end
  end
  table.sort(seqs)
  for _, q in ipairs(seqs) do
    if found >= want or looked >= most then more = 1; break end
    looked = looked + 1
    last = q
    local key = prefix .. ids[q]
    local whose = user == '' or redis.pcall('HGET', key, 'u')
    if whose == true or whose == user or type(whose) == 'table' then
      local fields = redis.pcall('HMGET', key, """ + _READ + """)
      if fields['err'] then fields = redis.call('TYPE', key)['ok'] end
      out[#out + 1] = ids[q]
      out[#out + 1] = q
      out[#out + 1] = fields
      found = found + 1
    end
  end
  if more == 0 then last = math.max(last, math.min(bucket * 128 + 127, top)) end
  bucket = bucket + 1
end
return {last, more, out, top}
"""

# The namespace's layout of keys: KEYS counters, the first layout's order
# (a sorted set); ARGV this sessiond's layout. Returns the namespace's
# layout, and marks with ARGV's a namespace that has no mark. What tells
# the first layout is its order, which held every session until it was
# purged; not a sequence number in the counters without a mark: the
# running daemons' commits put ``seq`` back after the engine lost its keys
# (FLUSHALL, a restart that came back empty), never ``layout``.
LAYOUT: Final = """
local v = redis.call('HGET', KEYS[1], 'layout')
if v then return v end
if redis.call('EXISTS', KEYS[2]) == 1 then return '1' end
redis.call('HSET', KEYS[1], 'layout', ARGV[1])
return ARGV[1]
"""

# What falls due, on the engine's clock, in one round trip: KEYS the due
# and purge indexes; ARGV the key prefix, how many of each at most, and the
# retention in microseconds ("0": nothing is purged by time). Returns the
# engine's TIME (seconds, microseconds), then for each index the ids and
# HMGETs of READ of what is due (active sessions whose deadline has come;
# expired ones whose retention, counted from their score, has run out),
# the score of the first entry after them (false: none), and the ids
# whose score is -inf (put there by hand: no time, which the daemon sets
# aside rather than read at every turn). Microseconds pass 2^31 but not
# 2^53, so a Lua number holds them exactly; they are written back as
# integers ('%.0f'), never in Lua's exponent notation.
DUE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local most = tonumber(ARGV[2])
local function take(index, upto)
  local unbounded = redis.call('ZRANGE', index, '-inf', '-inf', 'BYSCORE', 'LIMIT', 0, most)
  local ids = redis.call('ZRANGE', index, '(-inf', string.format('%.0f', upto), 'BYSCORE',
                         'LIMIT', 0, most)
  local out = {}
  for i = 1, #ids do
    out[#out + 1] = ids[i]
    -- A key that is no hash (set outside sessiond) answers its type in
    -- place of the fields, for the daemon to set it aside.
    local fields = redis.pcall('HMGET', ARGV[1] .. ids[i], """ + _READ + """)
    if fields['err'] then fields = redis.call('TYPE', ARGV[1] .. ids[i])['ok'] end
    out[#out + 1] = fields
  end
  local past = #unbounded + #ids
  local after = redis.call('ZRANGE', index, past, past, 'WITHSCORES')
  return out, after[2] or false, unbounded
end
local due, due_next, due_none = take(KEYS[1], now)
local purge, purge_next, purge_none = {}, false, {}
local retention = tonumber(ARGV[3])
if retention > 0 then purge, purge_next, purge_none = take(KEYS[2], now - retention) end
return {t[1], t[2], due, due_next, due_none, purge, purge_next, purge_none}
"""

# Entries of the indexes of deadlines whose hashes make no record (changed
# or deleted outside sessiond): KEYS due, purge; ARGV their ids.
SET_ASIDE: Final = """
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
end
return #ARGV
"""

# The namespace's figures: KEYS counters, users, due; ARGV now and now + 60 s
# (microseconds). Returns the counters' HGETALL, the users, those due soon.
STATS: Final = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HLEN', KEYS[2]),
        redis.call('ZCOUNT', KEYS[3], ARGV[1], ARGV[2])}
"""

# A setting of the namespace changed: KEYS config, counters, events; ARGV
# key, value (JSON), maxlen, at. Every daemon reloads on the event.
CONFIG_SET: Final = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local number = redis.call('HINCRBY', KEYS[2], 'events', 1)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'n', number, 'k', 'config',
           's', ARGV[1], 'a', ARGV[4], 'u', '', 'r', '')
return 1
"""

# The expiry lease: KEYS lease; ARGV holder, milliseconds. Taken if free,
# extended if ours; returns 1 when held by ``holder``, 0 when by another.
# Another's that has no end, or further than a lease lasts (set by hand, or
# by no sessiond), would stop expiry for as long: it is cut to a lease's
# length, and the answer says so: {0, its holder, the PTTL it had}.
LEASE: Final = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
local left = redis.call('PTTL', KEYS[1])
if left < 0 or left > tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {0, holder, left}
end
return 0
"""

RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
