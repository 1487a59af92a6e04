"""``python -m web caption IMAGE... [--watch]``: submit a job, watch it in the terminal.

The progress bar is fed by Socket.IO (no polling). Ctrl-C asks whether to
cancel the job; a second Ctrl-C at the prompt leaves without cancelling.
"""
from __future__ import annotations

import sys
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click
import requests
import socketio
from tqdm import tqdm

from settings import ClientSettings, load_client_settings

ENDINGS = ("task_completed", "task_cancelled", "task_error")
EXIT_CODES = {"task_completed": 0, "task_error": 1, "task_cancelled": 3}


class ClientError(Exception):
    pass


def submit(cfg: ClientSettings, images: list[Path]) -> dict:
    with ExitStack() as stack:
        files = [("images", (p.name, stack.enter_context(open(p, "rb")))) for p in images]
        try:
            resp = requests.post(f"{cfg.url}/api/jobs", files=files, timeout=120,
                                 headers={"Authorization": f"Bearer {cfg.token}"})
        except requests.RequestException as exc:
            raise ClientError(f"cannot reach Skald at {cfg.url}: {exc}") from exc
    try:
        body = resp.json()
    except ValueError:
        raise ClientError(f"unexpected answer from {cfg.url} ({resp.status_code})") from None
    if resp.status_code != 202:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        raise ClientError(f"{err.get('code', resp.status_code)}: {err.get('message', resp.text)}")
    return body


class Watcher:
    """Follows one job over Socket.IO and draws a tqdm bar."""

    def __init__(self, cfg: ClientSettings, task_id: str, total: int) -> None:
        self.cfg = cfg
        self.task_id = task_id
        self.ended = threading.Event()
        self.ending: tuple[str, dict] | None = None
        self.bar = tqdm(total=total or 1, unit="img", dynamic_ncols=True, file=sys.stderr)
        # Ctrl-C is ours to handle (python-socketio would disconnect on it).
        self.sio = socketio.Client(reconnection=True, reconnection_delay_max=5, handle_sigint=False)
        self.sio.on("connect", self._on_connect)
        self.sio.on("progress_update", self._on_progress)
        for name in ENDINGS:
            self.sio.on(name, lambda data, name=name: self._on_end(name, data))

    def _on_connect(self) -> None:
        # Runs after every reconnect too: re-join so the room survives a blip.
        self.sio.emit("join_task", {"task_id": self.task_id}, callback=self._on_ack)

    def _on_ack(self, ack: dict) -> None:
        if not ack.get("ok"):
            self.bar.write(f"cannot watch: {ack.get('error', {}).get('message')}")
            self.ending = ("task_error", {"error": ack.get("error", {})})
            self.ended.set()

    def _draw(self, data: dict) -> None:
        if data.get("total"):
            self.bar.total = data["total"]
        self.bar.n = data.get("current", 0)
        step = data.get("current_step") or data.get("state", "")
        eta = data.get("estimated_completion")
        self.bar.set_postfix_str(f"{data.get('state')} {step}" + (f" ~{eta:.0f}s left" if eta else ""))
        self.bar.refresh()

    def _on_progress(self, data: dict) -> None:
        if data.get("task_id") != self.task_id or self.ended.is_set():
            return
        self._draw(data)
        cap = data.get("last_caption")
        if cap:
            self.bar.write(f"  {cap['image']}: {cap['caption']}")

    def _on_end(self, name: str, data: dict) -> None:
        if data.get("task_id") != self.task_id or self.ended.is_set():
            return
        self._draw(data)
        self.ending = (name, data)
        self.ended.set()

    def cancel(self) -> None:
        """Cancel over Socket.IO, or over HTTP while the socket is reconnecting."""
        if self.sio.connected:
            try:
                ack = self.sio.call("cancel_task", {"task_id": self.task_id}, timeout=10)
            except socketio.exceptions.TimeoutError:
                ack = {"ok": False, "error": {"message": "no answer to the cancel request"}}
        else:
            resp = requests.post(f"{self.cfg.url}/api/jobs/{self.task_id}/cancel", timeout=10,
                                 headers={"Authorization": f"Bearer {self.cfg.token}"})
            ack = {"ok": resp.status_code == 202, "error": (resp.json() or {}).get("error", {})}
        self.bar.write("cancelling…" if ack.get("ok") else str(ack.get("error", {}).get("message")))

    def run(self) -> int:
        try:
            self.sio.connect(self.cfg.url, auth={"token": self.cfg.token},
                             transports=["websocket"], wait_timeout=10)
        except socketio.exceptions.ConnectionError as exc:
            raise ClientError(f"cannot watch live: {exc}") from exc
        try:
            while not self.ended.wait(0.2):
                pass
        except KeyboardInterrupt:
            self.bar.clear()
            try:
                if click.confirm(f"\nCancel job {self.task_id}?", default=False):
                    self.cancel()
                    while not self.ended.wait(0.2):
                        pass
                else:
                    return 130
            except (KeyboardInterrupt, click.Abort):
                return 130
        finally:
            self.bar.close()
            self.sio.disconnect()
        return self._summary()

    def _summary(self) -> int:
        name, data = self.ending or ("task_error", {})
        if name == "task_completed":
            res = data.get("results", {})
            click.echo(f"done: {res.get('count', 0)} captions, {res.get('failed', 0)} failed")
            for c in res.get("captions", []):
                click.echo(f"{c['image']}\t{c['caption']}")
        elif name == "task_cancelled":
            click.echo(f"cancelled after {data.get('completed', 0)} of {data.get('total', 0)} images")
        else:
            err = data.get("error", {})
            click.echo(f"failed: {err.get('message', 'unknown error')}", err=True)
        return EXIT_CODES.get(name, 1)


def run_caption(images: list[Path], watch: bool) -> int:
    cfg = load_client_settings()
    if not cfg.token:
        click.echo("error: set SKALD_TOKEN to your API token (python -m web user add NAME)", err=True)
        return 2
    try:
        job: dict[str, Any] = submit(cfg, images)
        click.echo(f"job {job['task_id']}: {job['total']} image(s) queued")
        if not watch:
            return 0
        return Watcher(cfg, job["task_id"], job["total"]).run()
    except ClientError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
