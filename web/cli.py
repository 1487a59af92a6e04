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
    """Run the web process (gevent, websocket transport; limits in web/server.py)."""
    import logging

    from gcpolicy import keep_pauses_short
    from web import create_app

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    app = create_app(settings)
    socketio = app.extensions["socketio"]
    keep_pauses_short()  # thousands of connections: keep full GC pauses short
    click.echo(f"Skald web on http://{settings.web_host}:{settings.web_port}/", err=True)
    if socketio.async_mode == "gevent":
        from web.server import serve as serve_gevent

        serve_gevent(app, settings)
    else:
        socketio.run(app, host=settings.web_host, port=settings.web_port,
                     log_output=True, allow_unsafe_werkzeug=True)


def _no_delay_handler() -> type:
    """gevent's request handler as ``serve`` uses it (Nagle off, timeouts, per-IP cap)."""
    from web.server import make_handler

    return make_handler()


@main.group()
def user() -> None:
    """Manage users (every change of credentials or role ends the sessions it affects)."""


def _account_change(change, *args):
    """Run ``change(db, *args)`` in one transaction, announce the user's credential
    change to every web process, and return its result; a refused change is exit 1."""
    from tasks.cancel import redis_client
    from tasks.db import session_scope
    from web.accounts import AccountError, announce

    settings = load_settings()
    try:
        with session_scope(settings.database_url) as db:
            result = change(db, *args)
            user_id = result[0].id
    except AccountError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    announce(redis_client(settings.redis_url), user_id)
    return result


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="The same as --role admin.")
@click.option("--role", type=click.Choice(["user", "viewer", "admin"]), default=None,
              help="user (default): own jobs; viewer: reads everything an admin reads; admin: everything.")
@click.option("--password", help="Password for the web login (generated when omitted).")
def user_add(name: str, admin: bool, role: str | None, password: str | None) -> None:
    """Create a user; prints its API token alone on the last line."""
    from tasks.db import session_scope
    from web.accounts import AccountError, create_user

    if admin and role not in (None, "admin"):
        click.echo("error: --admin is --role admin; give one of them", err=True)
        sys.exit(2)
    role = "admin" if admin else (role or "user")
    settings = load_settings()
    generated = password is None
    password = password or secrets.token_urlsafe(12)
    try:
        with session_scope(settings.database_url) as db:
            _, token = create_user(db, name, password=password, role=role)
    except AccountError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"created {role} {name}")
    if generated:
        click.echo(f"password: {password}")
    click.echo(token)


@user.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(["user", "viewer", "admin"]))
def user_role(name: str, role: str) -> None:
    """Give NAME the ROLE; their open sessions and connections end (they sign in again)."""
    from web.accounts import set_role

    _, changed = _account_change(set_role, name, role)
    click.echo(f"{name} is now {role}" if changed else f"{name} already is {role}")


@user.command("revoke")
@click.argument("name")
def user_revoke(name: str) -> None:
    """Revoke a user's API token; every session and connection of theirs ends."""
    from web.accounts import rotate_token

    _account_change(rotate_token, name, True)
    click.echo(f"revoked the API token of {name}")


@user.command("token")
@click.argument("name")
def user_token(name: str) -> None:
    """Issue a new API token for NAME (the old one, and what it opened, stop); printed last."""
    from web.accounts import rotate_token

    _, token = _account_change(rotate_token, name, False)
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


@main.command("watch-token")
@click.argument("task_id")
@click.option("--minutes", type=float, default=60.0, show_default=True,
              help="How long the token may be used to start watching.")
@click.option("--cancel", "may_cancel", is_flag=True, help="The token may also cancel the task.")
def watch_token(task_id: str, minutes: float, may_cancel: bool) -> None:
    """Print a watch token for TASK_ID (any Celery task on the broker; PROTOCOL.md)."""
    import math

    from web.access import TASK_ID_RE
    from web.watchtokens import mint, watch_secret

    if not TASK_ID_RE.match(task_id) or not math.isfinite(minutes):
        click.echo("error: give a Celery task id and a number of minutes", err=True)
        sys.exit(2)
    click.echo(mint(task_id, watch_secret(load_settings()), minutes, cancel=may_cancel))


def run() -> None:
    """Entry point: settings errors become a one-line message, exit 2."""
    try:
        main(standalone_mode=True)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
