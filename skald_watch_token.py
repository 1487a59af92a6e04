"""Skald watch tokens, in one file with no dependencies beyond Python's standard library.

Copy this file into any application (or import it) to let its users watch one
Celery task live through Skald without a Skald account (PROTOCOL.md, "Watching
any Celery task")::

    from skald_watch_token import mint
    token = mint(task.id, secret=os.environ["SKALD_WATCH_SECRET"], minutes=60)
    # hand `token` to the page that watches the task (Socket.IO auth={"watch_token": token},
    # or GET /api/tasks/<task_id>/progress?watch_token=<token>)

A token is ``EXPIRES.SIGNATURE``: ``EXPIRES`` a Unix time in seconds, ``SIGNATURE``
the lowercase hex HMAC-SHA256 of ``"<task_id>:<EXPIRES>"`` under the shared
secret (Skald's ``SKALD_WATCH_SECRET``). A token with **cancel rights** has the
same form but signs ``"<task_id>:<EXPIRES>:cancel"``: it watches like a plain
one, and only Skald (holding the secret) can tell the two apart, so a plain
token can never be turned into a cancel token.

When Skald runs without ``SKALD_WATCH_SECRET``, its secret is derived from its
``SECRET_KEY``: :func:`derive_secret` computes the same value.

Run as a script: ``python skald_watch_token.py TASK_ID [--minutes N] [--cancel]``
(the secret from ``SKALD_WATCH_SECRET``) prints one token.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import time

__all__ = ["CANCEL", "WATCH", "derive_secret", "expires_of", "mint", "verify"]

WATCH = "watch"     # what a plain token allows
CANCEL = "cancel"   # what a token minted with cancel=True allows (watching too)
DEFAULT_MINUTES = 60.0
MAX_TOKEN = 200     # longer strings are refused unread
_SIGNATURE_LEN = 64


def derive_secret(secret_key: str) -> str:
    """The watch secret Skald uses when ``SKALD_WATCH_SECRET`` is unset: the hex
    HMAC-SHA256 of ``"skald-watch"`` under its ``SECRET_KEY``."""
    return hmac.new(_bytes(secret_key), b"skald-watch", hashlib.sha256).hexdigest()


def mint(task_id: str, secret: str, minutes: float = DEFAULT_MINUTES, cancel: bool = False,
         now: float | None = None) -> str:
    """A token for ``task_id`` valid for ``minutes`` (default 60) from ``now`` (default:
    the current time); ``cancel=True`` also allows cancelling the task. (``minutes``
    of 0 or less gives a token that has already expired: handy in tests.)"""
    if not task_id or not isinstance(task_id, str):
        raise ValueError("task_id must be a non-empty string")
    if not secret:
        raise ValueError("the watch secret is empty")
    if not math.isfinite(minutes):
        raise ValueError("minutes must be a finite number")
    expires = int((time.time() if now is None else now) + minutes * 60)
    return f"{expires}.{_sign(secret, task_id, expires, cancel)}"


def verify(token: object, task_id: str, secret: str, now: float | None = None) -> str | None:
    """What ``token`` allows on ``task_id``: :data:`CANCEL`, :data:`WATCH`, or None
    (malformed, expired, for another task, or signed with another secret).

    Both signatures are computed and compared in constant time
    (``hmac.compare_digest``), whatever the token holds.
    """
    expires = _expires(token)
    if expires is None or not task_id or not secret:
        return None
    signature = token.rpartition(".")[2].encode("ascii")  # type: ignore[union-attr]
    watch_ok = hmac.compare_digest(signature, _sign(secret, task_id, expires, False).encode("ascii"))
    cancel_ok = hmac.compare_digest(signature, _sign(secret, task_id, expires, True).encode("ascii"))
    if expires < (time.time() if now is None else now):
        return None
    return CANCEL if cancel_ok else WATCH if watch_ok else None


def expires_of(token: object) -> int | None:
    """The ``EXPIRES`` of a well-formed token (not verified), else None."""
    return _expires(token)


def _expires(token: object) -> int | None:
    if not isinstance(token, str) or len(token) > MAX_TOKEN:
        return None
    head, dot, signature = token.partition(".")
    if not dot or not head.isascii() or not head.isdigit() or len(head) > 12 \
            or len(signature) != _SIGNATURE_LEN or not _is_hex(signature):
        return None
    return int(head)


def _is_hex(text: str) -> bool:
    return text.isascii() and all(c in "0123456789abcdef" for c in text)


def _sign(secret: str, task_id: str, expires: int, cancel: bool) -> str:
    message = f"{task_id}:{expires}" + (":cancel" if cancel else "")
    return hmac.new(_bytes(secret), message.encode("utf-8"), hashlib.sha256).hexdigest()


def _bytes(text: str) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else bytes(text)


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import os
    import sys

    parser = argparse.ArgumentParser(description="Print a Skald watch token for TASK_ID "
                                                 "(secret from SKALD_WATCH_SECRET).")
    parser.add_argument("task_id")
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES)
    parser.add_argument("--cancel", action="store_true", help="the token may also cancel the task")
    args = parser.parse_args(argv)
    secret = os.environ.get("SKALD_WATCH_SECRET", "")
    if not secret:
        print("error: set SKALD_WATCH_SECRET", file=sys.stderr)
        return 2
    try:
        print(mint(args.task_id, secret, args.minutes, args.cancel))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
