"""The task explorer's read side: one page of tasks by filters, sort and cursor.

It reads the index the bridge keeps beside the task records (layouts in
``protocol.py``, written by ``bridge/records.py``) and never scans every
record. A query becomes a list of *segments*, each one or more sorted sets
walked in score order (several are merged, e.g. the per-state sets for the
newest-first list of everything). Each of those sets is chunked (a directory of
listpack-sized chunks, ``protocol.py``); one Lua call (:data:`_RANGE_LUA`) walks a
set's chunks in order, so the reader sees one sorted set:

- ``sort=received``: the smallest sorted set among the facets filtered on
  (state, name, worker; each scored by received time), else every per-state
  set merged; the received time range is a score range.
- ``sort=state`` / ``sort=name``: one segment per state (in ``protocol.STATES``
  order) or per task name (by name), each by received time.
- ``sort=started`` / ``runtime`` / ``updated``: the one global sorted set of
  that value; other filters are checked on the records.

Each candidate's record is read (``MGET``) and checked against every filter
(the index may be a step behind), and ``q`` matches the id, args, kwargs,
result and exception text. Work per request is bounded: at most
:data:`EXAMINE_CAP` candidates are looked at; a page that stops there is
``truncated`` and its ``next_cursor`` goes on from the last one looked at. The
cursor is a position (segment, score, member), so new tasks (received later)
never shift a newest-first walk: each task is seen exactly once.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson
import redis

import protocol
from bridge.store import SnapshotStore

EXAMINE_CAP = 2000   # candidates looked at per request at most (bounded work)
TIE_CAP = 1000       # members read at the cursor's own score (tasks with the same time)
BATCH = 100          # candidates read per round trip (at least the page size)
TEXT_FIELDS = ("args", "kwargs", "result", "exception", "traceback", "outcome")

# One walk over a chunked set (layout in protocol.py): KEYS[1] its directory; ARGV: desc
# ("1"/"0"), after ("" or the cursor's score), lo and hi (inclusive score-range bounds
# such as "-inf" or "12500000"), lo_num and hi_num ("" or the bounds' numbers: chunks past them are
# not visited), n, tie cap. Returns (member, score, ...): first the members at exactly
# ``after`` (up to the tie cap; the caller keeps those past the cursor's member), then up
# to n members strictly past ``after`` (or from the bound) in walk order. Work is bounded
# by n + tie cap and the chunks visited (each holds at least one member).
_RANGE_LUA = """
local dir, desc, after, lo, hi = KEYS[1], ARGV[1] == '1', ARGV[2], ARGV[3], ARGV[4]
local lo_num, hi_num, n, tiecap = ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local CPRE = '@CPRE'
local out = {}
local function cover(point)
  local c = redis.call('ZREVRANGEBYSCORE', dir, point, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return c[1], c[2]
end
local function put(rows)
  for i = 1, #rows do out[#out + 1] = rows[i] end
end
if after ~= '' then
  local id = cover(after)
  if id then
    put(redis.call(desc and 'ZREVRANGEBYSCORE' or 'ZRANGEBYSCORE', CPRE .. id, after, after,
                   'WITHSCORES', 'LIMIT', 0, tiecap))
  end
end
local got = 0
local id, clo
if desc then
  local start = after ~= '' and ('(' .. after) or hi
  id, clo = cover(start)
  while id and got < n do
    local rows = redis.call('ZREVRANGEBYSCORE', CPRE .. id, start, lo, 'WITHSCORES',
                            'LIMIT', 0, n - got)
    put(rows)
    got = got + #rows / 2
    if lo_num ~= '' and tonumber(clo) <= tonumber(lo_num) then break end
    local c = redis.call('ZREVRANGEBYSCORE', dir, '(' .. clo, '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
    id, clo = c[1], c[2]
  end
else
  local start = after ~= '' and ('(' .. after) or lo
  id, clo = cover(after ~= '' and after or (lo_num ~= '' and lo_num or '-inf'))
  if not id then
    local c = redis.call('ZRANGE', dir, 0, 0, 'WITHSCORES')
    id, clo = c[1], c[2]
  end
  while id and got < n do
    local rows = redis.call('ZRANGEBYSCORE', CPRE .. id, start, hi, 'WITHSCORES',
                            'LIMIT', 0, n - got)
    put(rows)
    got = got + #rows / 2
    local c = redis.call('ZRANGEBYSCORE', dir, '(' .. clo, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    id, clo = c[1], c[2]
    if id and hi_num ~= '' and tonumber(clo) > tonumber(hi_num) then break end
  end
end
return {out, got}
""".replace("@CPRE", protocol.IX_CHUNK)

Cursor = tuple[int, float, bytes]  # (segment, score, member) of the last candidate looked at


@dataclass(frozen=True, slots=True)
class Query:
    """One request to the explorer (defaults: everything, newest received first, 50)."""

    state: str | None = None
    name: str | None = None
    worker: str | None = None
    received_after: float | None = None
    received_before: float | None = None
    q: str | None = None           # lowercase free text
    sort: str = "received"
    desc: bool = True
    limit: int = 50
    cursor: Cursor | None = None


@dataclass(frozen=True, slots=True)
class Segment:
    keys: tuple[str, ...]
    by_received: bool = True   # scored by received time (the time range is a score range)
    text_members: bool = False  # members are task ids as text (protocol.INDEX_KEY)


@dataclass(slots=True)
class Page:
    tasks: list[dict]
    next_cursor: str | None
    examined: int = 0
    truncated: bool = False


# -- pure pieces -------------------------------------------------------------------------------
def encode_cursor(cursor: Cursor) -> str:
    seg, score, member = cursor
    raw = orjson.dumps([seg, score, member.hex()])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """A cursor from its text; ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        seg, score, member = orjson.loads(raw)
        if not isinstance(seg, int) or isinstance(seg, bool) or seg < 0 \
                or not isinstance(score, (int, float)) or not isinstance(member, str):
            raise ValueError("cursor")
        return seg, float(score), bytes.fromhex(member)
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError("not a cursor") from exc


def matches(record: protocol.Record, query: Query) -> bool:
    """Whether a stored record passes every filter of ``query``."""
    snap, detail = record["snapshot"], record.get("detail") or {}
    if query.state is not None and snap.get("state") != query.state:
        return False
    if query.name is not None and (detail.get("name") or "") != query.name:
        return False
    if query.worker is not None and (detail.get("worker") or "") != query.worker:
        return False
    received = protocol.received_of(record)
    if query.received_after is not None and received < query.received_after:
        return False
    if query.received_before is not None and received >= query.received_before:
        return False
    if query.q:
        if query.q in str(snap.get("task_id", "")).lower():
            return True
        return any(isinstance(detail.get(f), str) and query.q in detail[f].lower()
                   for f in TEXT_FIELDS)
    return True


def merge(rows: list[list[tuple[bytes, float]]], desc: bool, n: int) -> list[tuple[bytes, float]]:
    """The first ``n`` of several sorted runs, in (score, member) order (Redis's own)."""
    flat = [r for run in rows for r in run]
    flat.sort(key=lambda r: (r[1], r[0]), reverse=desc)
    return flat[:n]


def plan(query: Query, sizes: dict[str, int], names: list[str]) -> list[Segment]:
    """The segments ``query`` walks, given the sizes of the filtered facets' sets (their
    chunk counts: an estimate, enough to pick the smallest) and the known task names (for
    ``sort=name``)."""
    facets = {f: getattr(query, f) for f in protocol.FACETS if getattr(query, f) is not None}
    if query.sort == "received":
        if facets:
            key = min((protocol.facet_key(f, v) for f, v in facets.items()),
                      key=lambda k: sizes.get(k, 0))
            return [Segment((key,))]
        return [Segment(tuple(protocol.facet_key("state", s) for s in protocol.STATES))]
    if query.sort in ("state", "name"):
        facet = query.sort
        values = [facets[facet]] if facet in facets else \
            list(protocol.STATES) if facet == "state" else names
        if query.desc:
            values = values[::-1]
        return [Segment((protocol.facet_key(facet, v),)) for v in values]
    key = {"started": protocol.IX_STARTED, "runtime": protocol.IX_RUNTIME,
           "updated": protocol.INDEX_KEY}[query.sort]
    return [Segment((key,), by_received=False, text_members=query.sort == "updated")]


# -- the walk -------------------------------------------------------------------------------------
class Explorer:
    """Pages of tasks over the index (one per web process; thread-safe, no state)."""

    def __init__(self, client: redis.Redis, store: SnapshotStore | None = None) -> None:
        self.client = client
        self.store = store or SnapshotStore(client)
        self._range = client.register_script(_RANGE_LUA)

    def page(self, query: Query) -> Page:
        segments = self._plan(query)
        seg_no, after = (query.cursor[0], query.cursor[1:]) if query.cursor else (0, None)
        tasks: list[dict] = []
        examined = 0
        while seg_no < len(segments):
            seg = segments[seg_no]
            want = min(max(BATCH, query.limit), EXAMINE_CAP - examined)
            batch = self._fetch(seg, after, query, want)
            ids = [self._task_id(seg, m) for m, _ in batch]
            records = self.store.get_many(ids)
            for i, ((member, score), task_id) in enumerate(zip(batch, ids)):
                examined += 1
                after = (score, member)
                record = records.get(task_id)
                if record is not None and matches(record, query):
                    tasks.append(protocol.record_row(record))
                if len(tasks) >= query.limit:
                    more = i + 1 < len(batch) or len(batch) == want or seg_no + 1 < len(segments)
                    return Page(tasks, encode_cursor((seg_no, score, member)) if more else None,
                                examined)
                if examined >= EXAMINE_CAP:
                    return Page(tasks, encode_cursor((seg_no, score, member)), examined, True)
            if len(batch) < want:
                seg_no, after = seg_no + 1, None
        return Page(tasks, None, examined)

    def _plan(self, query: Query) -> list[Segment]:
        pipe = self.client.pipeline(transaction=False)
        keys = [protocol.facet_key(f, getattr(query, f)) for f in protocol.FACETS
                if getattr(query, f) is not None]
        for key in keys:
            pipe.zcard(key)
        want_names = query.sort == "name" and query.name is None
        if want_names:
            pipe.zrangebylex(protocol.IX_NAMES, "-", "+")
        replies = pipe.execute() if keys or want_names else []
        sizes = dict(zip(keys, replies))
        names = [n.decode(errors="replace") if isinstance(n, bytes) else n
                 for n in (replies[-1] if want_names else [])]
        return plan(query, sizes, names)

    def _task_id(self, seg: Segment, member: bytes) -> str:
        if seg.text_members:
            return member.decode(errors="replace")
        return protocol.task_of_member(member)

    def _fetch(self, seg: Segment, after: tuple[float, bytes] | None, query: Query,
               n: int) -> list[tuple[bytes, float]]:
        """Up to ``n`` (member, score) of the segment after ``after``, in the walk's order."""
        lo: Any = "-inf"
        hi: Any = "+inf"
        if seg.by_received:  # bounds as scores, never tighter than matches()
            if query.received_after is not None:
                lo = protocol.ix_score(query.received_after)
            if query.received_before is not None:
                hi = protocol.ix_score(query.received_before)
        pipe = self.client.pipeline(transaction=False)
        if not seg.text_members:  # chunked sets: one script call per set
            lo_num = "" if lo == "-inf" else repr(float(lo))
            hi_num = "" if hi == "+inf" else repr(float(hi))
            mark = "" if after is None else repr(after[0])
            for key in seg.keys:
                self._range(keys=[key], args=["1" if query.desc else "0", mark, lo_num or lo,
                                              hi_num or hi, lo_num, hi_num, n, TIE_CAP], client=pipe)
            runs = []
            for flat, _ in pipe.execute():
                rows = [(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]
                runs.append(self._past(rows, after, query.desc))
            return merge(runs, query.desc, n)
        for key in seg.keys:
            if after is None:
                start, end = hi, lo
                if query.desc:
                    pipe.zrevrangebyscore(key, start, end, start=0, num=n, withscores=True)
                else:
                    pipe.zrangebyscore(key, end, start, start=0, num=n, withscores=True)
                continue
            score = repr(after[0])
            if query.desc:
                pipe.zrevrangebyscore(key, score, score, start=0, num=TIE_CAP, withscores=True)
                pipe.zrevrangebyscore(key, f"({score}", lo, start=0, num=n, withscores=True)
            else:
                pipe.zrangebyscore(key, score, score, start=0, num=TIE_CAP, withscores=True)
                pipe.zrangebyscore(key, f"({score}", hi, start=0, num=n, withscores=True)
        replies = pipe.execute()
        runs: list[list[tuple[bytes, float]]] = []
        if after is None:
            runs = [list(r) for r in replies]
        else:
            for ties, rest in zip(replies[::2], replies[1::2]):
                runs.append(self._past(list(ties), after, query.desc, list(rest)))
        return merge(runs, query.desc, n)

    @staticmethod
    def _past(rows: list[tuple[bytes, float]], after: tuple[float, bytes] | None, desc: bool,
              rest: list[tuple[bytes, float]] | None = None) -> list[tuple[bytes, float]]:
        """``rows`` without the members at the cursor's score that it already passed (all of
        them at that score come first), then ``rest``."""
        if after is None:
            return rows + (rest or [])
        mark = after[1]
        kept = [r for r in rows if r[1] != after[0] or (r[0] < mark if desc else r[0] > mark)]
        return kept + (rest or [])
