"""The command line of PROTOCOL.md."""
from __future__ import annotations

import secrets
import sys
from pathlib import Path

import click

from settings import SettingsError, load_settings


@click.group()
def main() -> None:
    """Skald: live alt-text captions on Celery workers."""


@main.command()
def serve() -> None:
    """Run the web process (gevent, websocket transport)."""
    from gcpolicy import keep_pauses_short
    from web import create_app

    settings = load_settings()
    app = create_app(settings)
    socketio = app.extensions["socketio"]
    keep_pauses_short()  # thousands of connections: keep full GC pauses short
    click.echo(f"Skald web on http://{settings.web_host}:{settings.web_port}/", err=True)
    options = {"handler_class": _no_delay_handler()} if socketio.async_mode == "gevent" else {}
    socketio.run(app, host=settings.web_host, port=settings.web_port,
                 log_output=True, allow_unsafe_werkzeug=True, **options)


def _no_delay_handler() -> type:
    """gevent's request handler with Nagle's algorithm off on each connection.

    A websocket frame written while the previous one is still unacknowledged
    would otherwise wait for the client's delayed ACK (40 ms on Linux): the
    larger part of a watcher's delivery p99 at 1 000 events/s (bench/LEVERS.md).
    """
    import socket

    from gevent import pywsgi

    class NoDelayHandler(pywsgi.WSGIHandler):
        def __init__(self, sock, address, server, rfile=None) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().__init__(sock, address, server, rfile)

    return NoDelayHandler


@main.group()
def user() -> None:
    """Manage users."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May see every job and the operator view.")
@click.option("--password", help="Password for the web login (generated when omitted).")
def user_add(name: str, admin: bool, password: str | None) -> None:
    """Create a user; prints its API token alone on the last line."""
    from tasks.db import session_scope
    from web.auth import AccountError, create_user

    settings = load_settings()
    generated = password is None
    password = password or secrets.token_urlsafe(12)
    try:
        with session_scope(settings.database_url) as db:
            _, token = create_user(db, name, password=password, admin=admin)
    except AccountError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"created {'admin' if admin else 'user'} {name}")
    if generated:
        click.echo(f"password: {password}")
    click.echo(token)


@user.command("revoke")
@click.argument("name")
def user_revoke(name: str) -> None:
    """Revoke a user's API token (the web login keeps working)."""
    from tasks.db import session_scope
    from web.auth import AccountError, rotate_token

    try:
        with session_scope(load_settings().database_url) as db:
            rotate_token(db, name, revoke_only=True)
    except AccountError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"revoked the API token of {name}")


@user.command("token")
@click.argument("name")
def user_token(name: str) -> None:
    """Issue a new API token for NAME (the old one stops working); printed last."""
    from tasks.db import session_scope
    from web.auth import AccountError, rotate_token

    try:
        with session_scope(load_settings().database_url) as db:
            token = rotate_token(db, name)
    except AccountError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(token)


@main.command()
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--message", default="", help="Shown to every user while it lasts.")
@click.option("--minutes", type=float, default=None, help="Switch off by itself after this long.")
def maintenance(state: str, message: str, minutes: float | None) -> None:
    """Switch maintenance mode on or off (new jobs refused, running ones finish)."""
    import time

    from tasks.cancel import redis_client
    from web.maintenance import announce, set_maintenance

    settings = load_settings()
    client = redis_client(settings.redis_url)
    until = time.time() + minutes * 60 if (minutes and state == "on") else None
    status = set_maintenance(client, state == "on", message, until)
    announce(settings.redis_url, status)
    click.echo(f"maintenance {'on' if status['active'] else 'off'}"
               + (f": {status['message']}" if status["message"] else ""))


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--watch", is_flag=True, help="Show a live progress bar until the job ends.")
def caption(images: tuple[Path, ...], watch: bool) -> None:
    """Submit IMAGES as one job (token from SKALD_TOKEN, server at SKALD_URL)."""
    from web.client import run_caption

    sys.exit(run_caption(list(images), watch))


@main.command()
@click.argument("task_id")
@click.option("--watch-token", default=None, help="A watch token for TASK_ID (no user token needed).")
def watch(task_id: str, watch_token: str | None) -> None:
    """Attach the live progress bar to a job or task that already exists."""
    from web.client import run_watch

    sys.exit(run_watch(task_id, watch_token))


def run() -> None:
    """Entry point: settings errors become a one-line message, exit 2."""
    try:
        main(standalone_mode=True)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
