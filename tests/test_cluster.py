"""The state tier of the operator view: ``bridge.cluster.Cluster`` with an injected clock.
No I/O, no sleeping.

Task counters are fed the board's transitions (bridge/state.py is the one table of
tasks; its rules are tests/test_state.py's), worker events go to ``observe``."""
from __future__ import annotations

import json
import uuid as uuidlib

import pytest

from bridge.cluster import HISTORY_COLUMNS, OTHER, Cluster
from bridge.state import BACKEND, Board
from protocol import ADMIN_ALERT, ADMIN_ROOM, METRIC_NAMES, SYSTEM_METRICS_UPDATE
from tasks import events as ev

T0 = 1_700_000_000.0   # a Tuesday, 22:13 UTC
HOST_A = "celery@alpha"
HOST_B = "w2@beta"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock()


class Fed(Cluster):
    """A cluster fed as the processor feeds it: every event observed, task events
    applied to a board first and the board's transitions counted."""

    def __init__(self, clock: Clock, max_tasks: int = 100_000, **kw) -> None:
        super().__init__(clock=clock, **kw)
        self.board = Board(max_tasks, clock)

    def apply(self, event: dict, source: str = "event") -> list:
        out = self.observe([event]) if source == "event" else []
        change = self.board.apply(event, source=source)
        return out + self.transitions(change.transitions)


@pytest.fixture()
def cluster(clock: Clock) -> Fed:
    return Fed(clock, offline_after=10.0, failure_burst=3, failure_window=60.0, queue_backlog=5,
               lag_alert=10.0, backlog_alert=100)


def worker_event(type_: str, host: str, ts: float, **fields) -> dict:
    base = {"type": type_, "hostname": host, "timestamp": ts, "freq": 2.0, "sw_ver": "5.7.0",
            "sw_ident": "py-celery", "sw_sys": "Linux", "active": 0, "processed": 0,
            "loadavg": [0.5, 0.25, 0.125]}
    return {**base, **fields}


def heartbeat(host: str, ts: float, **fields) -> dict:
    return worker_event(ev.WORKER_HEARTBEAT, host, ts, **fields)


def task_event(type_: str, task_id: str, ts: float, **fields) -> dict:
    return {"type": type_, "uuid": task_id, "timestamp": ts, "hostname": HOST_A, **fields}


def run_task(cluster: Cluster, clock: Clock, name: str = ev.CAPTION_TASK_NAME,
             end: str = ev.TASK_SUCCEEDED, runtime: float = 1.5, **end_fields) -> str:
    """sent -> received -> started -> ending, with the clock moving 0.5 s a step."""
    tid = str(uuidlib.uuid4())
    cluster.apply(task_event(ev.TASK_SENT, tid, clock.now, name=name, args="(1,)", kwargs="{}"))
    cluster.apply(task_event(ev.TASK_RECEIVED, tid, clock.advance(0.5), name=name))
    cluster.apply(task_event(ev.TASK_STARTED, tid, clock.advance(0.5)))
    fields = {"runtime": runtime, "result": "None"} if end == ev.TASK_SUCCEEDED else {}
    cluster.apply(task_event(end, tid, clock.advance(0.5), **{**fields, **end_fields}))
    return tid


def alerts(updates) -> list[dict]:
    return [u.payload for u in updates if u.event == ADMIN_ALERT]


def by_host(cluster: Cluster) -> dict[str, dict]:
    return {w["hostname"]: w for w in cluster.workers.as_list()}


# -- worker liveness ---------------------------------------------------------------------
def test_heartbeats_keep_a_worker_online(cluster, clock):
    cluster.apply(worker_event(ev.WORKER_ONLINE, HOST_A, clock.now))
    for _ in range(20):  # 40 s of heartbeats every 2 s
        clock.advance(2.0)
        assert cluster.apply(heartbeat(HOST_A, clock.now, active=1, processed=7,
                                       loadavg=[1.0, 0.5, 0.25])) == []
        assert alerts(cluster.tick()) == []
    worker = by_host(cluster)[HOST_A]
    assert worker["online"] is True
    assert worker["last_heartbeat"] == clock.now
    assert (worker["active"], worker["processed"], worker["loadavg"]) == (1, 7, [1.0, 0.5, 0.25])
    assert cluster.metrics()["workers_online"] == 1
    assert cluster.metrics()["system_load"] == [1.0, 0.5, 0.25]


def test_worker_offline_event_raises_one_alert(cluster, clock):
    cluster.apply(worker_event(ev.WORKER_ONLINE, HOST_A, clock.now))
    cluster.apply(worker_event(ev.WORKER_ONLINE, HOST_B, clock.now))
    clock.advance(1.0)
    raised = alerts(cluster.apply(worker_event(ev.WORKER_OFFLINE, HOST_B, clock.now)))
    assert len(raised) == 1
    alert = raised[0]
    assert set(alert) >= {"level", "kind", "message", "at"}
    assert (alert["level"], alert["kind"], alert["at"]) == ("warning", "worker_offline", clock.now)
    assert HOST_B in alert["message"] and alert["hostname"] == HOST_B
    # Neither a repeated offline event nor the expiry of its heartbeat alerts again.
    assert cluster.apply(worker_event(ev.WORKER_OFFLINE, HOST_B, clock.now)) == []
    clock.advance(60.0)
    cluster.apply(heartbeat(HOST_A, clock.now))
    assert alerts(cluster.tick()) == []
    workers = by_host(cluster)
    assert workers[HOST_B]["online"] is False and workers[HOST_B]["offline_reason"] == "offline"
    assert workers[HOST_A]["online"] is True
    assert [w["hostname"] for w in cluster.workers.as_list()] == [HOST_A, HOST_B]  # online first
    assert cluster.metrics()["workers_online"] == 1


def test_dead_worker_without_offline_event_expires(cluster, clock):
    """A killed worker sends nothing: its heartbeat expiry makes it offline, once."""
    cluster.apply(worker_event(ev.WORKER_ONLINE, HOST_A, clock.now))
    cluster.apply(heartbeat(HOST_A, clock.advance(2.0)))
    last = clock.now
    clock.advance(9.9)
    assert alerts(cluster.tick()) == [] and by_host(cluster)[HOST_A]["online"] is True
    clock.advance(0.2)  # 10.1 s without a heartbeat
    raised = alerts(cluster.tick())
    assert [(a["level"], a["kind"], a["hostname"]) for a in raised] == \
        [("critical", "worker_offline", HOST_A)]
    worker = by_host(cluster)[HOST_A]
    assert worker["online"] is False and worker["offline_reason"] == "heartbeat"
    assert worker["last_heartbeat"] == last
    clock.advance(30.0)
    assert alerts(cluster.tick()) == []
    # It comes back: online again, and a later death alerts again.
    cluster.apply(worker_event(ev.WORKER_ONLINE, HOST_A, clock.now))
    assert by_host(cluster)[HOST_A]["online"] is True
    clock.advance(11.0)
    assert len(alerts(cluster.tick())) == 1


def test_liveness_uses_the_bridge_clock_not_the_worker_clock(cluster, clock):
    """A worker whose clock is an hour behind is online while it heartbeats."""
    cluster.apply(heartbeat(HOST_A, clock.now - 3600))
    clock.advance(5.0)
    assert alerts(cluster.tick()) == [] and by_host(cluster)[HOST_A]["online"] is True


def test_slow_heartbeat_frequency_extends_the_expiry(cluster, clock):
    cluster.apply(heartbeat(HOST_A, clock.now, freq=10.0))  # expiry 2.5 * 10 s = 25 s
    clock.advance(20.0)
    assert alerts(cluster.tick()) == []
    clock.advance(6.0)
    assert len(alerts(cluster.tick())) == 1


def test_workers_are_bounded_offline_oldest_evicted_first(clock):
    cluster = Fed(clock, max_workers=3)
    cluster.apply(heartbeat("w-old@h", clock.now))
    cluster.apply(worker_event(ev.WORKER_OFFLINE, "w-old@h", clock.now))
    for host in ("w1@h", "w2@h"):
        cluster.apply(heartbeat(host, clock.advance(1.0)))
    cluster.apply(heartbeat("w3@h", clock.advance(1.0)))
    assert set(by_host(cluster)) == {"w1@h", "w2@h", "w3@h"}
    cluster.apply(heartbeat("w4@h", clock.advance(1.0)))
    assert set(by_host(cluster)) == {"w2@h", "w3@h", "w4@h"}


def test_malformed_worker_events_are_ignored(cluster, clock):
    for bad in [None, "x", {}, {"type": 5}, {"type": ev.WORKER_HEARTBEAT},
                {"type": ev.WORKER_HEARTBEAT, "hostname": ""},
                {"type": ev.WORKER_HEARTBEAT, "hostname": 42},
                heartbeat(HOST_A, clock.now, active="many", loadavg="high", processed=None)]:
        assert cluster.apply(bad) == []
    worker = by_host(cluster)[HOST_A]  # the last one counts, with safe values
    assert (worker["active"], worker["loadavg"]) == (0, [])


# -- task counters --------------------------------------------------------------------------
def test_counts_by_state_and_name(cluster, clock):
    run_task(cluster, clock, name="skald.caption_job")
    run_task(cluster, clock, name="skald.caption_job")
    run_task(cluster, clock, name="reports.build", end=ev.TASK_FAILED, exception="ValueError('x')")
    open_id = str(uuidlib.uuid4())
    cluster.apply(task_event(ev.TASK_SENT, open_id, clock.now, name="reports.build"))
    cluster.apply(task_event(ev.TASK_RECEIVED, open_id, clock.now, name="reports.build"))
    cluster.apply(task_event(ev.TASK_STARTED, open_id, clock.now))
    queued_id = str(uuidlib.uuid4())
    cluster.apply(task_event(ev.TASK_SENT, queued_id, clock.now, name="mail.send"))
    totals = cluster.task_totals
    assert totals[("SUCCESS", "skald.caption_job")] == 2
    assert totals[("FAILURE", "reports.build")] == 1
    assert totals[("STARTED", "reports.build")] == 2
    assert totals[("PENDING", "mail.send")] == 1
    assert cluster.open_counts == {("STARTED", "reports.build"): 1, ("PENDING", "mail.send"): 1}
    m = cluster.metrics()
    assert (m["active_jobs"], m["queued"], m["completed_today"], m["failed_today"]) == (1, 1, 2, 1)
    assert m["states"] == {"STARTED": 1, "PENDING": 1}


def test_counts_follow_the_board_an_ending_it_ignores_is_not_counted(cluster, clock):
    """The board decides (tests/test_state.py); the cluster counts only what it moved."""
    tid = run_task(cluster, clock)
    for late in (ev.TASK_SUCCEEDED, ev.TASK_FAILED, ev.TASK_REVOKED, ev.TASK_STARTED,
                 ev.TASK_PROGRESS):
        cluster.apply(task_event(late, tid, clock.now, current=1, total=2))
    assert cluster.completed_today == 1 and cluster.failed_today == 0
    assert cluster.open_counts == {}
    assert cluster.task_totals[("SUCCESS", ev.CAPTION_TASK_NAME)] == 1
    assert cluster.event_totals[ev.TASK_SUCCEEDED] == 2  # every event is still counted as seen


def test_a_name_learnt_late_moves_the_open_count(cluster, clock):
    tid = str(uuidlib.uuid4())
    cluster.apply(task_event(ev.TASK_STARTED, tid, clock.now))
    assert cluster.open_counts == {("STARTED", "unknown"): 1}
    cluster.apply(task_event(ev.TASK_RECEIVED, tid, clock.now, name="x.y"))
    assert cluster.open_counts == {("STARTED", "x.y"): 1}
    assert cluster.task_totals == {("STARTED", "unknown"): 1}  # no state was reached again


def test_bridge_decided_endings_are_counted(cluster, clock):
    tid = str(uuidlib.uuid4())
    cluster.apply(task_event(ev.TASK_SENT, tid, clock.now, name="x.y"))
    cluster.transitions(cluster.board.cancel(tid).transitions)  # queued: REVOKED at once
    assert cluster.open_counts == {} and cluster.task_totals[("REVOKED", "x.y")] == 1
    assert cluster.revoked_today == 1
    cluster.apply(task_event(ev.TASK_REVOKED, tid, clock.now))  # the worker's later word
    assert cluster.task_totals[("REVOKED", "x.y")] == 1


def test_task_names_are_capped(clock):
    cluster = Fed(clock, max_names=3)
    for i in range(6):
        run_task(cluster, clock, name=f"app.task_{i}")
    names = {name for _state, name in cluster.task_totals}
    assert names == {"app.task_0", "app.task_1", "app.task_2", OTHER}
    assert cluster.task_totals[("SUCCESS", OTHER)] == 3
    assert set(cluster.runtimes) == {"app.task_0", "app.task_1", "app.task_2", OTHER}


def test_tasks_the_board_evicts_leave_the_open_counts(clock):
    cluster = Fed(clock, max_tasks=10)
    for _ in range(25):
        cluster.apply(task_event(ev.TASK_SENT, str(uuidlib.uuid4()), clock.now, name="x.y"))
    assert sum(cluster.open_counts.values()) == 10 and cluster.metrics()["queued"] == 10


def test_runtime_histogram(cluster, clock):
    run_task(cluster, clock, runtime=0.05)
    run_task(cluster, clock, runtime=3.0)
    run_task(cluster, clock, runtime=5000.0)
    run_task(cluster, clock, end=ev.TASK_FAILED)  # runtime from started -> failed: 0.5 s
    buckets, total, count = cluster.runtimes[ev.CAPTION_TASK_NAME]
    assert count == 4 and total == pytest.approx(5003.55)
    assert sum(buckets) == 4 and buckets[0] == 1 and buckets[-1] == 1


def test_events_per_second_and_tasks_per_minute(cluster, clock):
    for _ in range(10):
        run_task(cluster, clock)    # 4 events over 1.5 s each
    m = cluster.metrics()
    assert m["tasks_per_minute"] == 10
    clock.now = float(int(clock.now) + 100)  # a fresh whole second, 100 s later
    for _ in range(30):
        cluster.apply(heartbeat(HOST_A, clock.now))
    clock.advance(0.9)
    assert cluster.metrics()["events_per_second"] == 3.0  # 30 events / 10 s window
    assert cluster.metrics()["tasks_per_minute"] == 0
    clock.advance(61.0)
    m = cluster.metrics()
    assert (m["tasks_per_minute"], m["events_per_second"]) == (0, 0)
    assert cluster.event_totals[ev.TASK_SUCCEEDED] == 10


def test_today_counters_roll_over_at_midnight_utc(cluster, clock):
    run_task(cluster, clock)
    run_task(cluster, clock, end=ev.TASK_FAILED)
    assert (cluster.completed_today, cluster.failed_today) == (1, 1)
    clock.now = (clock.now // 86400 + 1) * 86400 + 1
    cluster.tick()
    assert (cluster.completed_today, cluster.failed_today) == (0, 0)
    assert cluster.task_totals[("SUCCESS", ev.CAPTION_TASK_NAME)] == 1  # counters never reset


# -- alerts -------------------------------------------------------------------------------------
def test_failure_burst_alerts_once_per_window(cluster, clock):
    raised = []
    for _ in range(2):
        run_task(cluster, clock, end=ev.TASK_FAILED)
    assert not cluster.alerts.recent  # 2 < 3: nothing yet
    for _ in range(5):
        tid = str(uuidlib.uuid4())
        raised += alerts(cluster.apply(task_event(ev.TASK_FAILED, tid, clock.advance(1.0),
                                                  exception="E()")))
    assert [(a["level"], a["kind"]) for a in raised] == [("critical", "failure_burst")]
    assert raised[0]["count"] == 3
    clock.advance(61.0)
    more = []
    for _ in range(3):
        more += alerts(cluster.apply(task_event(ev.TASK_FAILED, str(uuidlib.uuid4()),
                                                clock.advance(1.0))))
    assert len(more) == 1


def test_spread_out_failures_are_no_burst(cluster, clock):
    raised = []
    for _ in range(6):
        raised += alerts(cluster.apply(task_event(ev.TASK_FAILED, str(uuidlib.uuid4()),
                                                  clock.advance(31.0))))
    assert raised == []


def test_reconciled_failures_count_but_raise_no_burst(cluster, clock):
    raised = []
    for _ in range(5):
        raised += alerts(cluster.apply(task_event(ev.TASK_FAILED, str(uuidlib.uuid4()),
                                                  clock.now - 3600), source=BACKEND))
    assert raised == [] and cluster.failed_today == 5


def test_queue_backlog_alerts_on_crossing(cluster, clock):
    cluster.set_queues({"celery": 4})
    assert alerts(cluster.tick()) == []
    cluster.set_queues({"celery": 5})
    raised = alerts(cluster.tick())
    assert [(a["level"], a["kind"], a["queued"]) for a in raised] == [("warning", "queue_backlog", 5)]
    cluster.set_queues({"celery": 50})
    assert alerts(cluster.tick(clock.advance(1))) == []  # still the same backlog
    cluster.set_queues({"celery": 0})
    cluster.tick(clock.advance(1))
    cluster.set_queues({"celery": 9})
    assert len(alerts(cluster.tick(clock.advance(1)))) == 1
    assert cluster.metrics()["queued"] == 9


def test_unknown_queue_lengths_raise_nothing(cluster, clock):
    cluster.set_queues(None)
    for _ in range(3):
        cluster.apply(task_event(ev.TASK_SENT, str(uuidlib.uuid4()), clock.now, name="x.y"))
    assert alerts(cluster.tick()) == []
    assert cluster.metrics()["queued"] == 3  # the tasks known to wait


def test_bridge_lag_alerts_and_recovers(cluster, clock):
    cluster.apply(heartbeat(HOST_A, clock.now - 15.0))  # applied 15 s after it was sent
    raised = alerts(cluster.tick())
    assert [(a["kind"], a["lag"]) for a in raised] == [("bridge_lag", 15.0)]
    assert cluster.metrics()["bridge_lag"] == 15.0
    cluster.apply(heartbeat(HOST_A, clock.now - 12.0))
    assert alerts(cluster.tick()) == []  # once, until it recovers
    cluster.apply(heartbeat(HOST_A, clock.advance(1.0)))
    assert alerts(cluster.tick()) == [] and cluster.metrics()["bridge_lag"] == 0.0
    cluster.apply(heartbeat(HOST_A, clock.now - 30.0))
    assert len(alerts(cluster.tick())) == 1


def test_backlog_inside_the_bridge_alerts(cluster, clock):
    cluster.set_backlog(101)
    assert [a["kind"] for a in alerts(cluster.tick())] == ["bridge_lag"]


def test_idle_bridge_has_no_lag(cluster, clock):
    cluster.apply(heartbeat(HOST_A, clock.now - 5.0))
    assert cluster.metrics()["bridge_lag"] == 5.0
    clock.advance(3.0)
    cluster.tick()
    assert cluster.metrics()["bridge_lag"] == 0.0


def test_each_alert_has_its_own_coalescing_key(cluster, clock):
    for host in ("a@x", "b@x", "c@x"):
        cluster.apply(heartbeat(host, clock.now))
    updates = [u for u in cluster.tick(clock.advance(11)) if u.event == ADMIN_ALERT]
    assert len(updates) == 3 and len({u.task_id for u in updates}) == 3
    assert all(u.room == ADMIN_ROOM and not u.terminal for u in updates)


# -- the metrics update, stats and restore -----------------------------------------------------------
def test_tick_publishes_the_contract_metrics(cluster, clock):
    cluster.apply(heartbeat(HOST_A, clock.now))
    cluster.set_watchers(4)
    updates = cluster.tick()
    update = updates[-1]
    assert (update.event, update.room) == (SYSTEM_METRICS_UPDATE, ADMIN_ROOM)
    metrics = update.payload["metrics"]
    assert set(METRIC_NAMES) <= set(metrics)
    assert metrics["watchers"] == 4 and metrics["workers_online"] == 1
    assert update.payload["workers"][0]["hostname"] == HOST_A
    json.dumps(update.payload)  # JSON-safe


def test_history_is_sampled_and_bounded(cluster, clock):
    for _ in range(1000):
        cluster.tick(clock.advance(1.0))
    assert len(cluster.history) == 180
    assert all(len(p) == len(HISTORY_COLUMNS) for p in cluster.history)
    times = [p[0] for p in cluster.history]
    assert times == sorted(times) and times[1] - times[0] == pytest.approx(5.0)


def test_stats_labels_are_bounded(clock):
    cluster = Fed(clock, max_names=5)
    ids = [run_task(cluster, clock, name=f"n{i % 9}") for i in range(40)]
    text = json.dumps(cluster.stats())
    assert not any(tid in text for tid in ids)
    assert HOST_A not in text
    assert len({n for _s, n, _c in cluster.stats()["tasks_total"]}) <= 6


def test_state_survives_a_restart(cluster, clock):
    cluster.apply(heartbeat(HOST_A, clock.now, processed=3))
    cluster.apply(heartbeat(HOST_B, clock.now))
    cluster.apply(worker_event(ev.WORKER_OFFLINE, HOST_B, clock.now))
    run_task(cluster, clock)
    run_task(cluster, clock, end=ev.TASK_FAILED)
    cluster.tick()
    stored = json.loads(json.dumps({"workers": cluster.workers.as_list(), "stats": cluster.stats(),
                                    "history": list(cluster.history),
                                    "alerts": list(cluster.alerts.recent)}))
    old = Board(clock=clock)
    old.apply(task_event(ev.TASK_RECEIVED, "t-open", clock.now, name="x.y"))
    old.apply(task_event(ev.TASK_STARTED, "t-open", clock.now))
    old.apply(task_event(ev.TASK_RECEIVED, "t-done", clock.now, name="x.y"))
    old.apply(task_event(ev.TASK_SUCCEEDED, "t-done", clock.now))
    records = json.loads(json.dumps(old.take_records()))
    clock.advance(3.0)
    fresh = Fed(clock, offline_after=10.0)
    fresh.load(**stored)
    fresh.transitions(fresh.board.load(records))
    assert fresh.workers.as_list() == cluster.workers.as_list()
    assert (fresh.completed_today, fresh.failed_today) == (1, 1)
    assert fresh.task_totals == cluster.task_totals
    assert fresh.runtimes == cluster.runtimes
    assert list(fresh.alerts.recent) == list(cluster.alerts.recent) and len(fresh.history) == 1
    assert fresh.open_counts == {("STARTED", "x.y"): 1}
    assert fresh.metrics()["workers_online"] == 1


def test_restored_workers_get_a_grace_period(cluster, clock):
    """A bridge down for a minute heard no heartbeat: not a reason to alert at once."""
    cluster.apply(heartbeat(HOST_A, clock.now))
    cluster.apply(heartbeat(HOST_B, clock.now))
    stored = json.loads(json.dumps(cluster.workers.as_list()))
    clock.advance(60.0)
    fresh = Fed(clock, offline_after=10.0)
    fresh.load(workers=stored)
    assert alerts(fresh.tick()) == [] and fresh.workers.online() == 2
    assert by_host(fresh)[HOST_A]["last_heartbeat"] == clock.now - 60.0  # shown as it was
    fresh.apply(heartbeat(HOST_A, clock.advance(5.0)))
    clock.advance(5.1)  # B (dead while the bridge was down) expires 10 s after the restart
    assert [a["hostname"] for a in alerts(fresh.tick())] == [HOST_B]
    assert by_host(fresh)[HOST_A]["online"] is True


def test_restore_on_another_day_starts_today_at_zero(cluster, clock):
    run_task(cluster, clock)
    stats = json.loads(json.dumps(cluster.stats()))
    clock.advance(86400)
    fresh = Fed(clock)
    fresh.load(stats=stats)
    assert fresh.completed_today == 0
    assert fresh.task_totals[("SUCCESS", ev.CAPTION_TASK_NAME)] == 1


def test_restore_ignores_garbage(cluster, clock):
    cluster.load(workers=[None, {}, {"hostname": 7}, {"hostname": "ok@h", "online": True}],
                 stats={"tasks_total": [["SUCCESS"], 5, ["A", "b", "c"]], "events": [1],
                        "runtimes": {"x": "y"}, "runtime_buckets": [1]},
                 history=[[1, 2], "x"], alerts=["x", {"kind": "k"}])
    assert [w["hostname"] for w in cluster.workers.as_list()] == ["ok@h"]
    assert cluster.task_totals == {} and len(cluster.history) == 0 and len(cluster.alerts.recent) == 1
