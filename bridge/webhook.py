"""Alerts to ``ALERT_WEBHOOK_URL``: every ``admin_alert`` the bridge emits, POSTed as JSON.

The body is the alert's payload (``level``, ``kind``, ``message``, ``at`` and its
extra fields) plus ``text``, a one-line summary, so a Slack (or Mattermost,
Discord-compatible, ...) incoming webhook shows it as it is.

Never in the bridge's way: :meth:`Webhook.send` only puts the alert on a bounded
queue (:data:`QUEUE_MAX`; when full, the alert is dropped and counted, and the
drop logged), and one background thread POSTs with a timeout
(``ALERT_WEBHOOK_TIMEOUT``, default 5 s), retrying a failure (a connection
error, a timeout, a 5xx or 429 answer) at most :data:`RETRIES` times with
doubling waits capped at :data:`BACKOFF_MAX` seconds. A 4xx answer other than
429 is not retried (the request itself is wrong). The standard library's
``urllib`` does the HTTP: no dependency of the bridge's own.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger("bridge.webhook")

QUEUE_MAX = 100      # alerts waiting to be sent at most (the rest are dropped)
RETRIES = 4          # further attempts after a failed one
BACKOFF = 0.5        # s before the first retry, doubled after each
BACKOFF_MAX = 10.0   # s between attempts at most
ICONS = {"critical": ":red_circle:", "warning": ":warning:", "info": ":information_source:"}


def body(alert: dict[str, Any]) -> dict[str, Any]:
    """The JSON posted for ``alert``: its payload plus a Slack-compatible ``text``."""
    level = str(alert.get("level") or "info")
    text = f"{ICONS.get(level, '')} Skald {level}: {alert.get('message') or alert.get('kind') or 'alert'}"
    return {**alert, "text": text.strip()}


class Webhook:
    """A background sender of alerts to one URL (``start`` it; ``stop`` ends it)."""

    def __init__(self, url: str, timeout: float = 5.0, retries: int = RETRIES,
                 backoff: float = BACKOFF, queue_max: int = QUEUE_MAX) -> None:
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError("ALERT_WEBHOOK_URL must be an http:// or https:// URL")
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.sent = self.failed = self.dropped = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(queue_max)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)

    def start(self) -> Webhook:
        self._thread.start()
        return self

    def send(self, alert: dict[str, Any]) -> bool:
        """Queue ``alert`` without waiting; False when the queue is full (dropped)."""
        try:
            self._queue.put_nowait(body(alert))
            return True
        except queue.Full:
            self.dropped += 1
            log.warning("alert webhook queue full: dropped %s alert (%d dropped)",
                        alert.get("kind"), self.dropped)
            return False

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(None)  # wakes the thread
        except queue.Full:
            pass
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                continue
            if self._deliver(item):
                self.sent += 1
            else:
                self.failed += 1

    def _deliver(self, item: dict[str, Any]) -> bool:
        data = json.dumps(item, default=str).encode()
        wait = self.backoff
        for attempt in range(1 + self.retries):
            retry = self._post(data)
            if retry is None:
                return True
            if not retry or attempt == self.retries:
                break
            if self._stop.wait(wait):
                return False
            wait = min(wait * 2, BACKOFF_MAX)
        log.warning("alert webhook: gave up on a %s alert", item.get("kind"))
        return False

    def _post(self, data: bytes) -> bool | None:
        """None when delivered; else whether trying again may help."""
        request = urllib.request.Request(self.url, data=data, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "User-Agent": "skald-bridge"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310 - the operator's URL
                resp.read(1024)
            return None
        except urllib.error.HTTPError as exc:
            log.warning("alert webhook answered %s", exc.code)
            return exc.code >= 500 or exc.code == 429
        except (urllib.error.URLError, OSError) as exc:
            log.warning("alert webhook failed: %s", exc)
            return True
        except ValueError as exc:  # a URL urllib cannot use: trying again will not help
            log.warning("alert webhook failed: %s", exc)
            return False
