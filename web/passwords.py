"""Password hashing (Werkzeug's scrypt), run off the event loop.

A check costs tens of milliseconds of CPU by design. Under gevent the web
process is one OS thread: hashing there stalls every request and websocket of
the process while it runs. So when gevent has patched the process, the hash runs
in gevent's thread pool (``hashlib.scrypt`` releases the GIL, so the loop keeps
serving meanwhile); otherwise (threaded test servers, the CLI) it runs inline.
An unknown user name is checked against a dummy hash the same way, so the
answer takes as long and names cannot be probed by timing.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from werkzeug.security import check_password_hash, generate_password_hash

T = TypeVar("T")


def off_loop(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in gevent's thread pool when gevent runs this process, else inline."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("socket"):
        import gevent

        return gevent.get_hub().threadpool.apply(fn, args)
    return fn(*args)


def hash_password(password: str) -> str:
    return off_loop(generate_password_hash, password)


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """Made on first use (not at import: it costs a hash)."""
    return generate_password_hash("not-a-password")


def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored``; with no stored hash, spends the same
    work on a dummy one and answers False."""
    if not stored:
        off_loop(check_password_hash, off_loop(_dummy_hash), password or "")
        return False
    return off_loop(check_password_hash, stored, password or "")
