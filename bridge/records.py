"""The bridge's writes to Redis: task records, cluster state, stale watcher reports.

Records and cluster state are added to an ``emitter.Ops`` so they travel in
the publisher's one lease-checked script with the emits they belong to
(``bridge/emitter.py``). Layouts are ``protocol.py``'s.
"""
from __future__ import annotations

from typing import Any

import orjson
import redis

import protocol
from bridge.store import watcher_reports
from protocol import Record

_FROM_RECORD = object()


class RecordWriter:
    """Task records with a TTL (default 7 days), the index trimmed to ``max_tasks``."""

    def __init__(self, ttl_seconds: int = 7 * 24 * 3600, max_tasks: int = 100_000) -> None:
        self.ttl = ttl_seconds
        self.max_tasks = max_tasks

    def put(self, ops: Any, record: Record) -> None:
        """Add the commands that store ``record`` (and move it in the explorer's index when the
        board says its entry changed: ``record["_index"]`` = (entry before or None, entry now))."""
        snap = record["snapshot"]
        task_id = snap["task_id"]
        moved = record.pop("_index", _FROM_RECORD)
        ops.set(protocol.task_key(task_id), protocol.encode_record(record), ex=self.ttl)
        if moved is _FROM_RECORD:  # not from the board (a tool, a test): index it as it is
            moved = (None, protocol.index_entry(record))
        if moved is not None:
            index(ops, protocol.member_of(task_id), *moved)
        ops.zadd(protocol.INDEX_KEY, {task_id: snap.get("updated_at") or 0})
        if snap.get("state") in protocol.TERMINAL_STATES:
            ops.srem(protocol.OPEN_KEY, task_id)
        else:
            ops.sadd(protocol.OPEN_KEY, task_id)

    def unindex(self, ops: Any, task_id: str, entry: tuple) -> None:
        """Add the commands that take an evicted task out of the explorer's index."""
        index(ops, protocol.member_of(task_id), entry, None)

    def trim(self, ops: Any) -> None:
        """Keep the index within ``max_tasks`` (oldest updates dropped)."""
        ops.zremrangebyrank(protocol.INDEX_KEY, 0, -self.max_tasks - 1)


# Chunked sorted sets (the explorer's index; layout in protocol.py): a logical set is a
# directory (chunk id -> lowest score it covers) and chunks of members, small enough for
# Redis to keep as listpacks (~40 B an entry instead of ~128 in a skiplist past 128
# members; Redis 7's default zset-max-listpack-entries is 128). Chunk i holds the scores in
# [lo_i, lo_i+1), so a walk in score order visits chunks in directory order. A member past
# the top of a full last chunk (CHUNK members) starts a new one; any chunk past SPLIT
# members (late, out-of-order scores) is split in two by score. Each insert scans its
# listpack, so smaller chunks cost Redis less CPU (64 measured ~10 % less than 100, the
# same memory), and scores are integers (microseconds, ``protocol.ix_score``): a listpack
# compares those without parsing text, about 3x cheaper an insert than decimal scores.
# Each call remembers a set's last chunk (most adds go there: received and started times
# grow), so an add costs one ZADD after the first. Scores travel as strings: a Lua number
# would be formatted with 14 digits.
CHUNK = 64   # members in a last chunk before a new one starts
SPLIT = 80   # members in any chunk before it is split (< 128: still a listpack)
INDEX_LUA = """
local CHUNK, SPLIT, SEQ, CPRE = @CHUNK, @SPLIT, '@SEQ', '@CPRE'
local function ix_chunk(dir, score)
  local c = redis.call('ZREVRANGEBYSCORE', dir, score, '-inf', 'LIMIT', 0, 1)
  if c[1] then return c[1], false end
  return redis.call('ZRANGE', dir, 0, 0)[1], true
end
local function ix_split(dir, key)
  local n = redis.call('ZCARD', key)
  local b = redis.call('ZRANGE', key, math.floor(n / 2), math.floor(n / 2), 'WITHSCORES')[2]
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]
  if tonumber(b) <= tonumber(first) then
    local nxt = redis.call('ZRANGEBYSCORE', key, '(' .. b, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if not nxt[1] then return end
    b = nxt[2]
  end
  local moved = redis.call('ZRANGEBYSCORE', key, b, '+inf', 'WITHSCORES')
  local id = redis.call('INCR', SEQ)
  local args = {}
  for i = 1, #moved, 2 do args[#args + 1] = moved[i + 1]; args[#args + 1] = moved[i] end
  redis.call('ZADD', CPRE .. id, unpack(args))
  redis.call('ZREMRANGEBYSCORE', key, b, '+inf')
  redis.call('ZADD', dir, b, id)
end
-- Past SPLIT a chunk is split by score; a chunk of one score cannot be, so it is tried
-- again only each CHUNK adds later (equal runtimes would otherwise retry on every add).
local function ix_oversize(dir, id, n)
  if n > SPLIT and (n - SPLIT) % CHUNK == 1 then ix_split(dir, CPRE .. id); return true end
  return false
end
local top = {}  -- per set, within this call: its last chunk {id, lo, n}, once looked up
local function ix_top(dir)
  local t = top[dir]
  if t == nil then
    local head = redis.call('ZREVRANGE', dir, 0, 0, 'WITHSCORES')
    t = head[1] and {id = head[1], lo = tonumber(head[2]), n = redis.call('ZCARD', CPRE .. head[1])}
        or false
    top[dir] = t
  end
  return t
end
local function ix_add(dir, score, member)
  local t, s = ix_top(dir), tonumber(score)
  if t and s >= t.lo then  -- the common case: into the last chunk, or a new one past it
    if t.n >= CHUNK then
      local last = redis.call('ZREVRANGE', CPRE .. t.id, 0, 0, 'WITHSCORES')[2]
      if s > tonumber(last) then  -- past the top of a full last chunk
        local id = tostring(redis.call('INCR', SEQ))
        redis.call('ZADD', dir, score, id)
        top[dir] = {id = id, lo = s, n = redis.call('ZADD', CPRE .. id, score, member)}
        return
      end
    end
    t.n = t.n + redis.call('ZADD', CPRE .. t.id, score, member)
    if ix_oversize(dir, t.id, t.n) then top[dir] = nil end
    return
  end
  top[dir] = nil
  local id, below = ix_chunk(dir, score)
  if not id then
    id = redis.call('INCR', SEQ)
    redis.call('ZADD', dir, score, id)
  elseif below then
    redis.call('ZADD', dir, score, id)  -- the first chunk reaches down
  end
  redis.call('ZADD', CPRE .. id, score, member)
  ix_oversize(dir, id, redis.call('ZCARD', CPRE .. id))
end
local function ix_rem(dir, score, member)
  local t, s = ix_top(dir), tonumber(score)
  local id = (t and s >= t.lo) and t.id or ix_chunk(dir, score)
  if not id then return end
  local key = CPRE .. id
  if redis.call('ZREM', key, member) == 1 then
    if t and t.id == id then t.n = t.n - 1 end
    if redis.call('EXISTS', key) == 0 then
      redis.call('ZREM', dir, id)
      top[dir] = nil
    end
  end
end
""".replace("@CHUNK", str(CHUNK)).replace("@SPLIT", str(SPLIT)).replace(
    "@SEQ", protocol.IX_SEQ).replace("@CPRE", protocol.IX_CHUNK)

SCRIPT = INDEX_LUA + """
if KEYS[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  local c, n = ARGV[i], tonumber(ARGV[i + 1])
  if c == 'IXADD' then ix_add(ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
  elseif c == 'IXREM' then ix_rem(ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
  else redis.call(c, unpack(ARGV, i + 2, i + 1 + n)) end
  i = i + 2 + n
end
return 1
"""
"""The publisher's one script: the lease check (KEYS[1], '' for none; ARGV[1] the token),
then ARGV[2] commands as (name, count, args...); IXADD/IXREM (dir, score, member) are the
chunked index's add and remove."""


def index_ops(member: bytes, was: tuple | None, now: tuple | None) -> list[tuple]:
    """The commands that move ``member`` from index entry ``was`` to ``now`` (either
    None: added, or removed); pure, so the rules are tested without Redis. Entries are
    ``protocol.IndexEntry``: (state, name, worker, received, started, runtime). IXADD and
    IXREM (set, score, member) act on a chunked set (:data:`SCRIPT`)."""
    cmds: list[tuple] = []
    for i, facet in enumerate(protocol.FACETS):
        old = protocol.facet_key(facet, was[i]) if was is not None else None
        new = protocol.facet_key(facet, now[i]) if now is not None else None
        if old is not None and (old != new or was[3] != now[3]):
            cmds.append(("IXREM", old, was[3], member))
        if new is not None and (new != old or was[3] != now[3]):
            cmds.append(("IXADD", new, now[3], member))
            if facet != "state" and (was is None or was[i] != now[i]):
                cmds.append(("ZADD", protocol.IX_NAMES if facet == "name" else protocol.IX_WORKERS,
                             0, now[i]))
    for i, key in ((4, protocol.IX_STARTED), (5, protocol.IX_RUNTIME)):
        old_v = was[i] if was is not None else None
        new_v = now[i] if now is not None else None
        if old_v is not None and new_v != old_v:
            cmds.append(("IXREM", key, old_v, member))
        if new_v is not None and new_v != old_v:
            cmds.append(("IXADD", key, new_v, member))
    return cmds


def index(ops: Any, member: bytes, was: tuple | None, now: tuple | None) -> None:
    """Add :func:`index_ops`' commands to ``ops`` (an ``emitter.Ops``; or a redis pipeline,
    which then runs :data:`SCRIPT` without a lease)."""
    cmds = index_ops(member, was, now)
    add = getattr(ops, "raw", None)
    if add is not None:
        for cmd in cmds:
            add(*cmd)
    elif cmds:
        global _pipe_script
        if _pipe_script is None:
            _pipe_script = ops.register_script(SCRIPT)
        flat = [a for cmd in cmds for a in (cmd[0], len(cmd) - 1, *cmd[1:])]
        _pipe_script(keys=[""], args=["", len(cmds), *flat], client=ops)


_pipe_script: Any = None  # SCRIPT for redis pipelines (EVALSHA; the pipeline loads it)


def backfill(ops: Any, records: list[Record]) -> None:
    """Add the index entries of stored ``records`` (a store written before the index
    existed: a bridge upgraded in place); then mark the index ready."""
    for record in records:
        index(ops, protocol.member_of(record["snapshot"]["task_id"]), None,
              protocol.index_entry(record))


def put_cluster(ops: Any, *, metrics: dict | None = None, workers: list | None = None,
                stats: dict | None = None, history: list | None = None,
                alerts: list | None = None, ttl: int = protocol.CLUSTER_TTL) -> None:
    """Add the writes of the cluster state (the parts given)."""
    for key, value in zip(protocol.CLUSTER_KEYS, (metrics, workers, stats, history, alerts)):
        if value is not None:
            ops.set(key, orjson.dumps(value), ex=ttl)


def prune_watchers(client: redis.Redis, now: float) -> None:
    """Drop the reports of web processes that stopped reporting (e.g. killed ones)."""
    stale = [name for name, report in watcher_reports(client).items()
             if report is None or now - report[1] > protocol.WATCHERS_FRESH]
    if stale:
        client.hdel(protocol.WATCHERS_KEY, *stale)
