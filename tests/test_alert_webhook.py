"""Alerts leave the page (bridge/webhook.py), dead workers are forgotten, the live worker
table is not capped, and the backlog alert covers every consumed queue (bridge/queues.py).

The webhook is received by a real HTTP server in a thread; the end-to-end test kills
a real worker under a real bridge (a private stack: its own Redis) and waits for the
worker-lost alert to arrive there.
"""
from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bridge.queues import MAX_QUEUES, QueueProbe, consumed_names
from bridge.webhook import Webhook, body
from protocol import SYSTEM_METRICS_UPDATE
from tasks import events as ev
from tests.support import Stack, wait_for
from tests.test_cluster import Clock, Fed, alerts, by_host, heartbeat, worker_event


class Receiver:
    """A local HTTP server recording the JSON bodies POSTed to it. ``answers``: the status
    of each successive request (then 200); ``delay``: s before answering."""

    def __init__(self, answers: tuple[int, ...] = (), delay: float = 0.0) -> None:
        self.bodies: list[dict] = []
        self.attempts: list[float] = []
        answers_left = list(answers)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.attempts.append(time.monotonic())
                time.sleep(delay)
                status = answers_left.pop(0) if answers_left else 200
                if status == 200:
                    outer.bodies.append(json.loads(data))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


ALERT = {"level": "critical", "kind": "worker_offline", "message": "worker w9@h went offline",
         "at": 1.0, "hostname": "w9@h"}


def test_the_body_is_the_payload_plus_slack_text():
    sent = body(ALERT)
    assert {k: sent[k] for k in ALERT} == ALERT
    assert sent["text"] == ":red_circle: Skald critical: worker w9@h went offline"


def test_failures_are_retried_with_backoff_then_delivered():
    receiver = Receiver(answers=(500, 503))
    hook = Webhook(receiver.url, timeout=2.0, backoff=0.1).start()
    try:
        assert hook.send(ALERT)
        wait_for(lambda: receiver.bodies, 10, what="the webhook")
        assert receiver.bodies[0]["hostname"] == "w9@h" and "text" in receiver.bodies[0]
        gaps = [b - a for a, b in zip(receiver.attempts, receiver.attempts[1:])]
        assert len(gaps) == 2 and gaps[1] > gaps[0] >= 0.09, gaps  # doubling waits
        assert (hook.sent, hook.failed) == (1, 0)
    finally:
        hook.stop()
        receiver.close()


def test_retries_are_capped_and_a_client_error_is_not_retried():
    for answers, attempts in (((500,) * 10, 3), ((400,), 1)):  # one try and two retries; one try
        receiver = Receiver(answers=answers)
        hook = Webhook(receiver.url, timeout=2.0, retries=2, backoff=0.05).start()
        try:
            hook.send(ALERT)
            wait_for(lambda: hook.failed == 1, 10, what="giving up")  # noqa: B023
            time.sleep(0.2)
            assert len(receiver.attempts) == attempts and not receiver.bodies
        finally:
            hook.stop()
            receiver.close()


def test_a_slow_endpoint_never_blocks_and_the_queue_is_bounded():
    receiver = Receiver(delay=1.0)
    hook = Webhook(receiver.url, timeout=0.3, retries=0, queue_max=3).start()
    try:
        start = time.monotonic()
        accepted = [hook.send({**ALERT, "at": i}) for i in range(10)]
        assert time.monotonic() - start < 0.1       # send() never waits on the endpoint
        assert accepted.count(False) >= 6 and hook.dropped == accepted.count(False)
    finally:
        hook.stop(0.5)
        receiver.close()


def test_only_http_urls():
    with pytest.raises(ValueError):
        Webhook("file:///etc/passwd")


# -- the worker view --------------------------------------------------------------------
def test_workers_offline_longer_than_forget_after_are_dropped():
    clock = Clock()
    cluster = Fed(clock, forget_after=3600.0)
    cluster.apply(heartbeat("gone@h", clock.now))
    cluster.apply(worker_event(ev.WORKER_OFFLINE, "gone@h", clock.now))
    cluster.apply(heartbeat("live@h", clock.now))
    clock.advance(3000.0)
    cluster.apply(heartbeat("live@h", clock.now))
    cluster.tick()
    assert set(by_host(cluster)) == {"gone@h", "live@h"}
    clock.advance(700.0)
    cluster.apply(heartbeat("live@h", clock.now))
    cluster.tick()
    assert set(by_host(cluster)) == {"live@h"}  # live ones stay however long they live
    assert cluster.workers.changed


def test_the_live_worker_table_is_not_capped():
    clock = Clock()
    cluster = Fed(clock, max_workers=1000)
    for i in range(450):
        cluster.apply(heartbeat(f"w{i}@h", clock.now))
    update = next(u for u in cluster.tick() if u.event == SYSTEM_METRICS_UPDATE)
    assert len(update.payload["workers"]) == 450


def test_the_backlog_alert_covers_queues_workers_consume():
    probe = QueueProbe.__new__(QueueProbe)
    probe.names = ["celery"]
    assert probe.add_names({"reports", "celery", "images"}) == ["images", "reports"]
    assert probe.names == ["celery", "images", "reports"]
    probe.add_names({f"q{i}" for i in range(500)})
    assert len(probe.names) == MAX_QUEUES
    clock = Clock()
    cluster = Fed(clock, queue_backlog=5)
    cluster.set_queues({"celery": 0, "reports": 7})
    raised = alerts(cluster.tick())
    assert raised and raised[0]["kind"] == "queue_backlog" and raised[0]["queues"]["reports"] == 7


# -- end to end ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def webhook_stack(tmp_path_factory):
    receiver = Receiver()
    stack = Stack(tmp_path_factory.mktemp("webhook"), worker_offline_after=1.0)
    stack.env.update({"ALERT_WEBHOOK_URL": receiver.url, "WORKER_OFFLINE_AFTER": "1",
                      "QUEUE_POLL_SECONDS": "0.5", "ALERT_QUEUE_BACKLOG": "3"})
    try:
        stack.procs.start_worker("hooked", stack.env, stack.settings, concurrency=1,
                                 extra=["-Q", "celery,hook-reports"])
        stack.start_bridge("hb")
        yield stack, receiver
    finally:
        stack.close()
        receiver.close()


def test_a_killed_worker_reaches_the_webhook(webhook_stack):
    stack, receiver = webhook_stack
    from tasks.app import make_celery

    app = make_celery(stack.settings)
    # The bridge learnt the queue the worker consumes (no configuration names it).
    wait_for(lambda: "hook-reports" in consumed_names(app, 1), 20, interval=0.5, what="the queue")
    worker = next(p for p in stack.procs.procs if p.name == "hooked")
    wait_for(lambda: "probing the queues workers consume: hook-reports" in
             next(p for p in stack.procs.procs if p.name == "hb").log(), 20, what="the bridge's probe")
    worker.signal(signal.SIGKILL)
    got = wait_for(lambda: [b for b in receiver.bodies if b.get("kind") == "worker_offline"], 20,
                   what="the worker-lost alert at the webhook")
    alert = got[0]
    assert alert["hostname"].startswith("hooked@") and alert["level"] == "critical"
    assert "hooked@" in alert["text"] and "heartbeats" in alert["message"]


def test_a_backlog_in_a_queue_only_a_dead_worker_consumed_reaches_the_webhook(webhook_stack):
    """No configuration names ``hook-reports``: the bridge learnt it from the worker, and
    keeps probing it after that worker died, so its backlog still raises the alert."""
    stack, receiver = webhook_stack
    from tasks.app import make_celery

    app = make_celery(stack.settings)
    for _ in range(4):
        app.send_task("reports.build", queue="hook-reports")
    got = wait_for(lambda: [b for b in receiver.bodies if b.get("kind") == "queue_backlog"], 20,
                   what="the backlog alert at the webhook")
    assert got[0]["queues"]["hook-reports"] >= 3 and got[0]["queued"] >= 3
    assert got[0]["text"].startswith(":warning: Skald warning:")
