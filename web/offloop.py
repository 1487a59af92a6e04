"""CPU-heavy work (password hashing, image decoding) off the gevent loop.

Under gevent the web process is one OS thread: a hash or a decode there stalls
every request and websocket of the process while it runs. When gevent has
patched the process, :func:`off_loop` runs the call in gevent's thread pool
(scrypt and Pillow's decoders release the GIL, so the loop keeps serving);
otherwise (threaded test servers, the CLI) it runs inline.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def off_loop(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in gevent's thread pool when gevent runs this process, else inline."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("socket"):
        import gevent

        return gevent.get_hub().threadpool.apply(fn, args)
    return fn(*args)
