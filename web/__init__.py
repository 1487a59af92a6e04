"""The web process: Flask pages and HTTP API, Flask-SocketIO endpoint, the CLI.

Kept free of imports so ``python -m web serve`` can monkey-patch with gevent
before Flask, redis or ssl are imported.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from flask import Flask


def create_app(config: Any = None, *, message_queue: bool = True) -> Flask:
    """Build the web app (see :func:`web.app.create_app`)."""
    from web.app import create_app as build

    return build(config, message_queue=message_queue)
