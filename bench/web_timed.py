"""``python -m bench.web_timed [--threading]``: ``python -m web serve`` plus a GC-pause log.

Without ``--threading`` it does what ``web/__main__.py`` does for ``serve``
(gevent's ``monkey.patch_all()`` first). With ``--threading`` it skips the
patch, so ``WEB_ASYNC_MODE=threading`` runs Werkzeug's threaded server on OS
threads (``python -m web serve`` always patches, so its "threading" would run
on greenlets). Either way each garbage collection of 5 ms or more is written to
stderr as ``BENCH_GC <unix time> <generation> <ms>``.
"""
import sys

THREADING = "--threading" in sys.argv
if not THREADING:
    from gevent import monkey

    monkey.patch_all()

import gc  # noqa: E402
import time  # noqa: E402

_start = [0.0]


def _gc(phase, info):
    if phase == "start":
        _start[0] = time.perf_counter()
        return
    ms = 1000 * (time.perf_counter() - _start[0])
    if ms >= 5:
        sys.stderr.write(f"BENCH_GC {time.time():.3f} {info['generation']} {ms:.1f}\n")
        sys.stderr.flush()


gc.callbacks.append(_gc)

from web.cli import run  # noqa: E402

sys.argv = ["web", "serve"]
run()
