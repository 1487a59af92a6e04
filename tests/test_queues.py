"""The bridge's broker queue probe (bridge/queues.py) against a real Redis broker."""
from __future__ import annotations

import gc

from bridge.queues import QueueProbe
from tasks.app import make_celery


def test_lengths_count_waiting_messages(settings):
    app = make_celery(settings)
    for _ in range(3):
        app.send_task("nobody.consumes.this", queue="probe-test-queue")
    probe = QueueProbe(app, names=["probe-test-queue", "probe-test-absent"])
    try:
        assert probe.lengths() == {"probe-test-queue": 3, "probe-test-absent": 0}
    finally:
        probe.close()


def test_probing_makes_no_garbage(settings):
    """Each probe used to open (and close) a kombu channel: a cycle of channel, pools and
    clients that only the garbage collector frees, and the bridge's GC policy (gcpolicy.py)
    kept it for up to 15 minutes: ~2 MB a minute of an idle bridge's memory (issue 16,
    item 11). One channel now serves every probe."""
    probe = QueueProbe(make_celery(settings), names=["probe-test-absent", "celery"])
    try:
        for _ in range(5):
            probe.lengths()  # warm: the connection and channel exist
        gc.collect()
        gc.disable()
        try:
            for _ in range(50):
                assert probe.lengths() is not None
            garbage = gc.collect()
        finally:
            gc.enable()
        assert garbage < 50, f"{garbage} objects of garbage from 50 probes"
    finally:
        probe.close()
