"""``python -m web caption IMAGE... [--watch]`` and ``python -m web watch TASK_ID``.

The progress bar is fed by Socket.IO (no polling) and every caption is printed
as it is made (also those folded into one coalesced update), on standard error
with the bar; when the job ends, its captions go to standard output as
``image<TAB>caption`` lines. Ctrl-C pauses the bar and asks whether to cancel;
on "no" the job goes on and the command says how to watch it again. A server
that cannot be reached or a refused token is one plain sentence, never a
traceback. Exit codes (PROTOCOL.md): 0 completed, 3 cancelled, 1 failed or a
client error, 130 left running with Ctrl-C.
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
from requests_toolbelt import MultipartEncoder, MultipartEncoderMonitor
from tqdm import tqdm

from settings import ClientSettings, load_client_settings

ENDINGS = ("task_completed", "task_cancelled", "task_error")
EXIT_CODES = {"task_completed": 0, "task_error": 1, "task_cancelled": 3}
LEFT_RUNNING = 130


class ClientError(Exception):
    """Something the user should read as one sentence (exit 1)."""


def _error_of(resp: requests.Response) -> tuple[str, str]:
    try:
        body = resp.json()
    except ValueError:
        return str(resp.status_code), f"unexpected answer (HTTP {resp.status_code})"
    err = body.get("error", {}) if isinstance(body, dict) else {}
    return str(err.get("code", resp.status_code)), str(err.get("message", resp.reason))


def submit(cfg: ClientSettings, images: list[Path], progress: bool = True) -> dict:
    """POST the images as one job, with a bytes bar on standard error; the 202 body."""
    with ExitStack() as stack:
        fields = [("images", (p.name, stack.enter_context(open(p, "rb")), "application/octet-stream"))
                  for p in images]
        encoder = MultipartEncoder(fields=fields)
        bar = stack.enter_context(tqdm(total=encoder.len, unit="B", unit_scale=True, unit_divisor=1024,
                                       desc="upload", file=sys.stderr, disable=not progress, leave=False))
        monitor = MultipartEncoderMonitor(encoder, lambda m: bar.update(m.bytes_read - bar.n))
        try:
            resp = requests.post(f"{cfg.url}/api/jobs", data=monitor, timeout=(10, 600), headers={
                "Authorization": f"Bearer {cfg.token}", "Content-Type": monitor.content_type})
        except requests.RequestException:
            raise ClientError(f"cannot reach Skald at {cfg.url}; is it running?") from None
    if resp.status_code == 401:
        raise ClientError(f"Skald at {cfg.url} did not accept the token in SKALD_TOKEN")
    if resp.status_code != 202:
        code, message = _error_of(resp)
        raise ClientError(f"{message} ({code})")
    return resp.json()


class Watcher:
    """Follows one task over Socket.IO and draws a tqdm bar.

    ``token``: a user's API token; ``watch_token``: a watch token for this task
    (either or both). ``total``: images, when known (else the first update says).
    """

    def __init__(self, cfg: ClientSettings, task_id: str, total: int = 0,
                 token: str | None = None, watch_token: str | None = None) -> None:
        self.cfg = cfg
        self.task_id = task_id
        self.token = token
        self.watch_token = watch_token
        self.ended = threading.Event()
        self.ending: tuple[str, dict] | None = None
        self.refused: dict | None = None
        self._lock = threading.Lock()
        self._paused = False
        self._held: list[str] = []    # lines that came while the prompt was up
        # delay: nothing is drawn when the connection fails at once (one sentence, no bar)
        self.bar = tqdm(total=total or None, unit="img", dynamic_ncols=True, file=sys.stderr, delay=1)
        self._refusal: str | None = None
        # Ctrl-C is ours to handle (python-socketio would disconnect on it).
        self.sio = socketio.Client(reconnection=True, reconnection_delay_max=5, handle_sigint=False)
        self.sio.on("connect", self._on_connect)
        self.sio.on("connect_error", self._on_connect_error)
        self.sio.on("progress_update", self._on_progress)
        for name in ENDINGS:
            self.sio.on(name, lambda data, name=name: self._on_end(name, data))

    def _payload(self) -> dict:
        body = {"task_id": self.task_id}
        if self.watch_token:
            body["watch_token"] = self.watch_token
        return body

    def _on_connect(self) -> None:
        # Runs after every reconnect too: re-join so the room survives a blip.
        self.sio.emit("join_task", self._payload(), callback=self._on_ack)

    def _on_connect_error(self, data: Any = None) -> None:
        message = data.get("message") if isinstance(data, dict) else data
        self._refusal = str(message) if message else None

    def _on_ack(self, ack: Any) -> None:
        if not isinstance(ack, dict) or not ack.get("ok"):
            error = ack.get("error", {}) if isinstance(ack, dict) else {}
            self.refused = error if isinstance(error, dict) else {}
            self.ended.set()
        elif isinstance(ack.get("snapshot"), dict):
            self._draw(ack["snapshot"])

    # -- drawing ---------------------------------------------------------------------------
    def _say(self, line: str) -> None:
        with self._lock:
            if self._paused:
                self._held.append(line)
            else:
                self.bar.write(line, file=sys.stderr)

    def _draw(self, data: dict) -> None:
        with self._lock:
            if data.get("total"):
                self.bar.total = data["total"]
            self.bar.n = int(data.get("current") or 0)
            step = data.get("current_step") or ""
            eta = data.get("estimated_completion")
            left = f" ~{eta:.0f}s left" if isinstance(eta, (int, float)) and eta else ""
            self.bar.set_postfix_str(f"{data.get('state', '')} {step}{left}".strip(), refresh=False)
            if not self._paused:
                self.bar.refresh()

    def _on_progress(self, data: Any) -> None:
        if not isinstance(data, dict) or data.get("task_id") != self.task_id or self.ended.is_set():
            return
        self._draw(data)
        made = data.get("recent_captions")
        if not isinstance(made, list):
            made = [data["last_caption"]] if isinstance(data.get("last_caption"), dict) else []
        for cap in made:
            if isinstance(cap, dict) and cap.get("caption") is not None:
                self._say(f"  {cap.get('image')}: {cap.get('caption')}")

    def _on_end(self, name: str, data: Any) -> None:
        if not isinstance(data, dict) or data.get("task_id") != self.task_id or self.ended.is_set():
            return
        self._draw(data)
        self.ending = (name, data)
        self.ended.set()

    # -- control ----------------------------------------------------------------------------
    def cancel(self) -> None:
        """Cancel over Socket.IO, or over HTTP while the socket is reconnecting."""
        ack: dict
        if self.sio.connected:
            try:
                ack = self.sio.call("cancel_task", self._payload(), timeout=10)
            except socketio.exceptions.TimeoutError:
                ack = {"ok": False, "error": {"message": "no answer to the cancel request"}}
        else:
            try:
                resp = requests.post(f"{self.cfg.url}/api/jobs/{self.task_id}/cancel", timeout=10,
                                     headers={"Authorization": f"Bearer {self.token}"})
                ack = {"ok": resp.status_code == 202, "error": {"message": _error_of(resp)[1]}}
            except requests.RequestException:
                ack = {"ok": False, "error": {"message": f"cannot reach Skald at {self.cfg.url}"}}
        message = "cancelling…" if ack.get("ok") else str((ack.get("error") or {}).get("message"))
        self.bar.write(message, file=sys.stderr)

    def _pause(self, paused: bool) -> None:
        with self._lock:
            self._paused = paused
            if paused:
                self.bar.clear()
                return
            held, self._held = self._held, []
        for line in held:
            self.bar.write(line, file=sys.stderr)
        self.bar.refresh()

    def _ask(self) -> int | None:
        """Ctrl-C: pause the bar and ask. None: go on watching (cancel sent); else the exit code."""
        self._pause(True)
        try:
            answer = click.confirm(f"\nCancel job {self.task_id}?", default=False, err=True)
        except (KeyboardInterrupt, click.Abort):
            answer = False
        finally:
            self._pause(False)
        if answer:
            self.cancel()
            return None
        self.bar.close()
        click.echo(f"The job goes on. Watch it again with: python -m web watch {self.task_id}", err=True)
        return LEFT_RUNNING

    def run(self) -> int:
        auth: dict[str, str] = {}
        if self.token:
            auth["token"] = self.token
        elif self.watch_token:
            auth["watch_token"] = self.watch_token
        try:
            self.sio.connect(self.cfg.url, auth=auth, transports=["websocket"], wait_timeout=10)
        except socketio.exceptions.ConnectionError as exc:
            self.bar.close()
            raise ClientError(_refusal(self.cfg.url, f"{self._refusal or ''} {exc}")) from None
        try:
            while True:
                try:
                    while not self.ended.wait(0.2):
                        pass
                    break
                except KeyboardInterrupt:
                    code = self._ask()
                    if code is not None:
                        return code
        finally:
            self.bar.close()
            self.sio.disconnect()
        return self._summary()

    def _summary(self) -> int:
        if self.refused is not None:
            code = self.refused.get("code", "error")
            if code == "not_found":
                raise ClientError(f"there is no task {self.task_id} that you may watch")
            raise ClientError(f"cannot watch task {self.task_id}: {self.refused.get('message') or code}")
        name, data = self.ending or ("task_error", {})
        if name == "task_completed":
            res = data.get("results") or {}
            if "captions" not in res and "result" in res:  # any Celery task: its result
                click.echo(f"done: {res['result']}")
                return 0
            click.echo(f"done: {res.get('count', 0)} captions, {res.get('failed', 0)} failed")
            for c in res.get("captions", []):
                click.echo(f"{c['image']}\t{c['caption']}")
            for f in res.get("failed_images") or []:
                click.echo(f"could not read {f.get('image')}: {f.get('error')}", err=True)
        elif name == "task_cancelled":
            click.echo(f"cancelled after {data.get('completed', 0)} of {data.get('total', 0)} images")
        else:
            err = data.get("error", {})
            click.echo(f"failed: {err.get('message', 'unknown error')}", err=True)
        return EXIT_CODES.get(name, 1)


def _refusal(url: str, why: str) -> str:
    """One sentence for a connection that did not open (``why``: the server's word and the error)."""
    text = why.lower()
    if "unauthorized" in text:
        return f"Skald at {url} did not accept the token"
    if "rate_limited" in text:
        return f"Skald at {url} has too many connections from you open; close some and retry"
    return f"cannot reach Skald at {url}; is it running?"


def run_caption(images: list[Path], watch: bool) -> int:
    cfg = load_client_settings()
    if not cfg.token:
        click.echo("error: set SKALD_TOKEN to your API token (python -m web user add NAME)", err=True)
        return 2
    try:
        job: dict[str, Any] = submit(cfg, images, progress=sys.stderr.isatty() or watch)
        click.echo(f"job {job['task_id']}: {job['total']} image(s) queued")
        if not watch:
            return 0
        return Watcher(cfg, job["task_id"], job["total"], token=cfg.token).run()
    except ClientError as exc:
        _say_error(exc)
        return 1


def _say_error(exc: ClientError) -> None:
    text = str(exc)
    click.echo(f"error: {text}" + ("" if text.endswith((".", "?", "!")) else "."), err=True)


def run_watch(task_id: str, watch_token: str | None) -> int:
    """``watch TASK_ID``: the same bar for a job or task that already exists."""
    cfg = load_client_settings()
    if not cfg.token and not watch_token:
        click.echo("error: set SKALD_TOKEN to your API token, or pass --watch-token.", err=True)
        return 2
    try:
        return Watcher(cfg, task_id, token=cfg.token, watch_token=watch_token).run()
    except ClientError as exc:
        _say_error(exc)
        return 1
