"""The task explorer's index: pure rules without I/O, then pages over a real Redis written
through the bridge's own record path (Board -> take_records -> Publisher -> RecordWriter).

Redis tier: a database of its own (db 5) on the session's private Redis; no processes.
"""
from __future__ import annotations

import random
import uuid

import pytest
import redis

import protocol
from bridge.emitter import Ops, Publisher
from bridge.records import RecordWriter, index_ops
from bridge.state import Board
from bridge.store.explorer import EXAMINE_CAP, Explorer, Query, decode_cursor, encode_cursor, matches, plan
from tasks import events as ev

NAMES = ("reports.build", "mail.send", "thumbs.make")
WORKERS = ("celery@a", "celery@b")


# -- pure ------------------------------------------------------------------------------------
@pytest.mark.parametrize("task_id", [str(uuid.uuid4()), "custom-id", "x" * 16, "\x01abc",
                                     "\x01" + "y" * 15, "A" * 155, str(uuid.uuid4()).upper()])
def test_member_encoding_round_trips(task_id):
    member = protocol.member_of(task_id)
    assert protocol.task_of_member(member) == task_id
    if task_id == task_id.lower() and len(task_id) == 36:
        assert len(member) == 16  # a canonical UUID is kept as its 16 bytes


def test_index_ops_move_a_task_between_facets():
    m = b"m"
    new = ("RECEIVED", "", "", 10.0, None, None)
    cmds = index_ops(m, None, new)
    assert ("IXADD", "skald:ix:state:RECEIVED", 10.0, m) in cmds
    assert ("IXADD", "skald:ix:name:", 10.0, m) in cmds and ("ZADD", protocol.IX_NAMES, 0, "") in cmds
    started = ("STARTED", "mail.send", "celery@a", 10.0, 11.0, None)
    cmds = index_ops(m, new, started)
    assert ("IXREM", "skald:ix:state:RECEIVED", 10.0, m) in cmds
    assert ("IXREM", "skald:ix:name:", 10.0, m) in cmds
    assert ("IXADD", "skald:ix:worker:celery@a", 10.0, m) in cmds
    assert ("ZADD", protocol.IX_WORKERS, 0, "celery@a") in cmds
    assert ("IXADD", protocol.IX_STARTED, 11.0, m) in cmds
    done = ("SUCCESS", "mail.send", "celery@a", 10.0, 11.0, 0.5)
    cmds = index_ops(m, started, done)
    assert cmds == [("IXREM", "skald:ix:state:STARTED", 10.0, m),
                    ("IXADD", "skald:ix:state:SUCCESS", 10.0, m), ("IXADD", protocol.IX_RUNTIME, 0.5, m)]
    assert index_ops(m, done, done) == []
    gone = index_ops(m, done, None)
    assert {c[1] for c in gone} == {"skald:ix:state:SUCCESS", "skald:ix:name:mail.send",
                                    "skald:ix:worker:celery@a", protocol.IX_STARTED, protocol.IX_RUNTIME}
    assert all(c[0] == "IXREM" for c in gone)
    moved = index_ops(m, done, ("SUCCESS", "mail.send", "celery@a", 12.0, 11.0, 0.5))
    assert ("IXREM", "skald:ix:state:SUCCESS", 10.0, m) in moved
    assert ("IXADD", "skald:ix:state:SUCCESS", 12.0, m) in moved


def test_cursor_round_trips_and_rejects_junk():
    cursor = (2, 1700000000.123456, b"\x00\xffabc")
    assert decode_cursor(encode_cursor(cursor)) == cursor
    for junk in ("", "abc", "!!!", encode_cursor((0, 1.0, b"x"))[:-3] + "zzz", "W10"):
        with pytest.raises(ValueError):
            decode_cursor(junk)


def test_plan_picks_the_smallest_facet_and_orders_segments():
    q = Query(state="SUCCESS", name="mail.send")
    sizes = {"skald:ix:state:SUCCESS": 900, "skald:ix:name:mail.send": 40}
    assert plan(q, sizes, []).pop().keys == ("skald:ix:name:mail.send",)
    everything = plan(Query(), {}, [])
    assert len(everything) == 1 and len(everything[0].keys) == len(protocol.STATES)
    by_state = plan(Query(sort="state", desc=False), {}, [])
    assert [s.keys[0].rsplit(":", 1)[1] for s in by_state] == list(protocol.STATES)
    by_name = plan(Query(sort="name"), {}, ["a", "b"])
    assert [s.keys[0] for s in by_name] == ["skald:ix:name:b", "skald:ix:name:a"]
    runtime = plan(Query(sort="runtime", state="FAILURE"), {}, [])
    assert runtime[0].keys == (protocol.IX_RUNTIME,) and not runtime[0].by_received


def test_matches_checks_every_filter_and_free_text():
    rec = {"snapshot": protocol.snapshot("t1", state="FAILURE", updated_at=50.0),
           "detail": {"name": "n", "worker": "w", "seen_at": 20.0, "kwargs": "{'colour': 'Needle'}",
                      "args": "[1]", "traceback": "ValueError: boom"}}
    assert matches(rec, Query(state="FAILURE", name="n", worker="w"))
    assert not matches(rec, Query(worker="x")) and not matches(rec, Query(state="SUCCESS"))
    assert matches(rec, Query(received_after=20.0, received_before=21.0))
    assert not matches(rec, Query(received_before=20.0)) and not matches(rec, Query(received_after=20.5))
    assert matches(rec, Query(q="needle")) and matches(rec, Query(q="boom"))
    assert not matches(rec, Query(q="hay"))


def test_board_hands_index_moves_and_evictions_to_the_writer():
    clock = iter(range(1000, 2000)).__next__
    board = Board(max_tasks=2, clock=lambda: float(clock()))
    ids = [str(uuid.uuid4()) for _ in range(3)]
    board.apply({"type": ev.TASK_RECEIVED, "uuid": ids[0], "name": "a", "timestamp": 5.0,
                 "args": "[1]", "kwargs": "{'k': 'v'}", "retries": 0, "root_id": ids[0]})
    rec = board.take_records()[0]
    assert rec["_index"] == (None, ("RECEIVED", "a", "", protocol.ix_score(5.0), None, None))
    assert rec["detail"]["kwargs"] == "{'k': 'v'}" and rec["detail"]["root_id"] == ids[0]
    board.apply({"type": ev.TASK_PROGRESS, "uuid": ids[0], "current": 1, "total": 2, "timestamp": 6.0})
    assert board.take_records()[0]["_index"][1][0] == "PROGRESS"
    board.apply({"type": ev.TASK_PROGRESS, "uuid": ids[0], "current": 2, "total": 2, "timestamp": 6.5})
    assert board.take_records()[0]["_index"] is None  # more progress does not move it
    for task_id in ids[1:]:
        board.apply({"type": ev.TASK_RECEIVED, "uuid": task_id, "name": "a", "timestamp": 7.0})
    gone = board.take_unindexed()
    assert [g[0] for g in gone] == [ids[0]] and gone[0][1][0] == "PROGRESS"


# -- over Redis, through the bridge's record path ------------------------------------------------
@pytest.fixture()
def rc(redis_proc):
    client = redis.Redis.from_url(f"redis://127.0.0.1:{redis_proc.port}/5")
    client.flushdb()
    yield client
    client.flushdb()


class Feed:
    """Celery events through a Board and the bridge's Publisher (no lease) into Redis."""

    def __init__(self, client: redis.Redis, max_tasks: int = 100_000) -> None:
        self.client = client
        self.board = Board(max_tasks)
        self.writer = RecordWriter(max_tasks=max_tasks)
        self.publisher = Publisher(client, self.writer)
        self.clock = 1_000.0

    def events(self, events: list[dict]) -> None:
        for event in events:
            self.board.apply(event)
        extra = Ops()
        for task_id, entry in self.board.take_unindexed():
            self.writer.unindex(extra, task_id, entry)
        self.publisher.send([], self.board.take_records(), extra=extra if extra.count else None)

    def task(self, rng: random.Random, end: bool = True, **fields) -> str:
        task_id = str(uuid.uuid4())
        self.clock += rng.choice([0.0, 0.5, 1.0])  # ties on purpose
        t = self.clock
        name, worker = rng.choice(NAMES), rng.choice(WORKERS)
        evs = [{"type": ev.TASK_RECEIVED, "uuid": task_id, "name": name, "timestamp": t,
                "args": f"[{rng.randint(0, 9)}]", "kwargs": repr(fields or {"n": rng.randint(0, 9)})},
               {"type": ev.TASK_STARTED, "uuid": task_id, "hostname": worker, "timestamp": t + 0.1}]
        if end:
            if rng.random() < 0.3:
                evs.append({"type": ev.TASK_FAILED, "uuid": task_id, "timestamp": t + 0.2,
                            "exception": "ValueError('boom')", "traceback": "Traceback: boom"})
            else:
                evs.append({"type": ev.TASK_SUCCEEDED, "uuid": task_id, "timestamp": t + 0.3,
                            "runtime": round(rng.uniform(0.01, 5), 3), "result": "'ok'"})
        self.events(evs)
        return task_id


def walk(explorer: Explorer, query: Query, between=None) -> list[dict]:
    rows, cursor, pages = [], None, 0
    while True:
        page = explorer.page(_with_cursor(query, cursor))
        rows += page.tasks
        pages += 1
        assert pages < 500
        if page.next_cursor is None:
            return rows
        cursor = decode_cursor(page.next_cursor)
        if between:
            between()


def _with_cursor(query: Query, cursor) -> Query:
    fields = {f: getattr(query, f) for f in Query.__slots__}
    return Query(**{**fields, "cursor": cursor})


def expected(client: redis.Redis, query: Query) -> list[str]:
    from bridge.store import SnapshotStore

    store = SnapshotStore(client)
    records = list(store.recent(100_000))
    keep = [r for r in records if matches(r, query)]
    key = {
        "received": lambda r: protocol.index_entry(r)[3],
        "started": lambda r: r["detail"].get("started_at"),
        "runtime": lambda r: r["detail"].get("runtime"),
        "updated": lambda r: r["snapshot"]["updated_at"],
    }[query.sort]
    keep = [r for r in keep if key(r) is not None]
    keep.sort(key=lambda r: (key(r), protocol.member_of(r["snapshot"]["task_id"])
                             if query.sort != "updated" else r["snapshot"]["task_id"].encode()),
              reverse=query.desc)
    return [r["snapshot"]["task_id"] for r in keep]


def test_pages_cover_every_task_once_while_new_ones_arrive(rc):
    rng = random.Random(7)
    feed = Feed(rc)
    before = [feed.task(rng, end=rng.random() < 0.6) for _ in range(230)]
    open_ids = [t for t in before if feed.board.get(t) and not feed.board.get(t).ended]
    explorer = Explorer(rc)
    arrived = []

    def more():  # new tasks arrive and open ones end while the pages are walked
        arrived.extend(feed.task(rng) for _ in range(7))
        if open_ids:
            feed.events([{"type": ev.TASK_SUCCEEDED, "uuid": open_ids.pop(), "runtime": 1.0,
                          "timestamp": feed.clock}])
    rows = walk(explorer, Query(limit=25), between=more)
    seen = [r["task_id"] for r in rows]
    assert len(seen) == len(set(seen)) and set(before) <= set(seen)
    assert not set(seen) & set(arrived)  # newer than the walk's start: on no later page


@pytest.mark.parametrize("query", [
    Query(state="FAILURE", limit=7), Query(name="mail.send", worker="celery@b", limit=9),
    Query(sort="runtime", limit=11), Query(sort="runtime", desc=False, name="thumbs.make", limit=8),
    Query(sort="started", state="SUCCESS", limit=13), Query(sort="updated", limit=17),
    Query(received_after=1020.0, received_before=1060.0, limit=6),
    Query(received_after=1020.0, received_before=1060.0, sort="received", desc=False, limit=5),
])
def test_filters_and_sorts_match_a_full_scan(rc, query):
    rng = random.Random(11)
    feed = Feed(rc)
    for _ in range(150):
        feed.task(rng, end=rng.random() < 0.8)
    assert [r["task_id"] for r in walk(Explorer(rc), query)] == expected(rc, query)


def test_sort_by_state_and_name_group_in_order(rc):
    rng = random.Random(3)
    feed = Feed(rc)
    for _ in range(60):
        feed.task(rng, end=rng.random() < 0.7)
    rows = walk(Explorer(rc), Query(sort="state", desc=False, limit=10))
    ranks = [protocol.STATES.index(r["state"]) for r in rows]
    assert ranks == sorted(ranks) and len(rows) == 60
    rows = walk(Explorer(rc), Query(sort="name", limit=10))
    names = [r["name"] for r in rows]
    assert names == sorted(names, reverse=True) and len(rows) == 60


def test_free_text_finds_a_kwarg_value_and_stays_bounded(rc):
    rng = random.Random(5)
    feed = Feed(rc)
    for _ in range(40):
        feed.task(rng)
    wanted = feed.task(rng, colour="needle-42")
    for _ in range(40):
        feed.task(rng)
    rows = walk(Explorer(rc), Query(q="needle-42", limit=10))
    assert [r["task_id"] for r in rows] == [wanted]
    page = Explorer(rc).page(Query(q="nothing-like-it"))
    assert page.tasks == [] and page.examined == 81 and page.next_cursor is None
    assert EXAMINE_CAP >= 1000


def test_evicted_tasks_leave_the_index(rc):
    rng = random.Random(9)
    feed = Feed(rc, max_tasks=20)
    ids = [feed.task(rng) for _ in range(50)]
    listed = [r["task_id"] for r in walk(Explorer(rc), Query(limit=100))]
    assert sorted(listed) == sorted(ids[-20:])
    members = set()
    for key in rc.scan_iter(protocol.IX_CHUNK + "*"):
        members |= {protocol.task_of_member(m) for m in rc.zrange(key, 0, -1)}
    assert members == set(ids[-20:])


def test_a_store_from_before_the_index_is_backfilled(rc):
    from bridge.records import backfill
    from bridge.store import SnapshotStore

    rng = random.Random(13)
    feed = Feed(rc)
    ids = [feed.task(rng) for _ in range(30)]
    for key in list(rc.scan_iter("skald:ix:*")):  # as an older bridge left it: records only
        rc.delete(key)
    assert Explorer(rc).page(Query()).tasks == []
    ops = Ops()
    backfill(ops, SnapshotStore(rc).recent(100))
    Publisher(rc, RecordWriter()).run(ops)
    assert sorted(r["task_id"] for r in walk(Explorer(rc), Query(limit=7))) == sorted(ids)


@pytest.mark.parametrize("scores", ["scattered", "growing"])
def test_chunked_sets_stay_small_ordered_and_walk_like_one_sorted_set(rc, scores):
    from bridge.records import SPLIT
    from bridge.store.explorer import Segment

    rng = random.Random(17)
    key, kept = protocol.IX_RUNTIME, {}
    publisher = Publisher(rc, RecordWriter())
    clock = 0.0
    for _ in range(6):
        ops = Ops()
        for i in range(400):
            member = uuid.uuid4().bytes
            if scores == "scattered":  # out-of-order scores and ties: splits
                seconds = rng.choice([rng.randint(0, 30), round(rng.uniform(0, 1e4), 6)])
            else:  # received times: mostly growing, some late, some equal
                clock += rng.choice([0.0, 0.001, 0.5])
                seconds = clock - (rng.uniform(0, 2) if rng.random() < 0.1 else 0.0)
            kept[member] = float(protocol.ix_score(seconds))
            ops.raw("IXADD", key, kept[member], member)
            if scores == "growing" and i % 3 == 0:  # removals between adds: emptied chunks
                gone = rng.choice(sorted(kept))
                ops.raw("IXREM", key, kept.pop(gone), gone)
        for member in rng.sample(sorted(kept), 150):
            ops.raw("IXREM", key, kept.pop(member), member)
        publisher.run(ops)
    chunks = [protocol.IX_CHUNK + c.decode() for c in rc.zrange(key, 0, -1)]
    assert sum(rc.zcard(c) for c in chunks) == len(kept) and len(chunks) > 10
    for chunk in chunks:
        assert rc.object("encoding", chunk) == b"listpack" and rc.zcard(chunk) <= SPLIT
    want = sorted(((s, m) for m, s in kept.items()), reverse=True)
    explorer, seg = Explorer(rc), Segment((key,), by_received=False)
    for desc in (True, False):
        rows = want if desc else want[::-1]
        query = Query(sort="runtime", desc=desc)
        for start in (None, 0, 7, 400, len(rows) - 2):
            after = None if start is None else rows[start]
            got = explorer._fetch(seg, after, query, 300)
            first = 0 if start is None else start + 1
            assert [(s, m) for m, s in got] == rows[first:first + 300]
    received = Query(received_after=10.0, received_before=5000.0, desc=False)
    got = Explorer(rc)._fetch(Segment((key,)), None, received, 2000)
    low, high = protocol.ix_score(10.0), protocol.ix_score(5000.0)  # bounds the walk includes
    assert [(s, m) for m, s in got] == [r for r in want[::-1] if low <= r[0] <= high]


def test_an_index_of_another_layout_is_dropped_and_backfilled(rc, monkeypatch):
    from bridge.service import Bridge
    from bridge.store import SnapshotStore

    rng = random.Random(19)
    feed = Feed(rc)
    ids = [feed.task(rng) for _ in range(30)]
    for key in list(rc.scan_iter("skald:ix:*")):  # as a version-1 bridge left it
        rc.delete(key)
    rc.zadd("skald:ix:state:SUCCESS", {protocol.member_of(ids[0]): 1.0})
    rc.set(protocol.IX_READY, "1")
    bridge = Bridge.__new__(Bridge)
    bridge.client, bridge.publisher = rc, Publisher(rc, RecordWriter())
    bridge._backfill(SnapshotStore(rc).recent(100))
    assert rc.get(protocol.IX_READY) == protocol.IX_VERSION.encode()
    assert sorted(r["task_id"] for r in walk(Explorer(rc), Query(limit=7))) == sorted(ids)
