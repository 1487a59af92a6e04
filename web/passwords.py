"""Password hashing (Werkzeug's scrypt), run off the event loop.

A check costs tens of milliseconds of CPU by design, so it runs off the gevent
loop (web/offloop.py).
An unknown user name is checked against a dummy hash the same way, so the
answer takes as long and names cannot be probed by timing.
"""
from __future__ import annotations

import functools

from werkzeug.security import check_password_hash, generate_password_hash

from web.offloop import off_loop


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
