"""The Socket.IO message queue as each web process listens to it (python-socketio's
``RedisManager``, with three changes).

1. **Re-subscribing.** After Redis goes away the listener retries with a capped,
   growing back-off (:data:`RETRY_FIRST` doubling to :data:`RETRY_CAP`) instead of
   python-socketio's 1 s doubling to 60 s.
2. **Catching up.** Whatever the bridge published while this process was not
   subscribed is lost (pub/sub keeps nothing), and the bridge publishes as soon
   as Redis answers. So each time Redis confirms the subscription (the first
   time, after our own retry, or after redis-py re-subscribed by itself) the
   hooks' ``catch_up`` re-sends to the task rooms this process holds what the
   store now says: the ending, or else the current snapshot. It runs in the
   listener before any message queued behind the confirmation, so nothing the
   bridge publishes after the snapshot is read can be missed.
3. **One ending per client, nothing after it.** Every ending that reaches a task
   room goes only to the members that have not had that task's ending yet (the
   hooks' ``already_ended``); a catch-up and a late publish of the same ending can
   therefore never both reach a client (PROTOCOL.md: exactly one terminal event).
   A ``progress_update`` skips the members that already had the ending (the hooks'
   ``had_ending``): a client that joined as the job ended got the database's ending
   from ``join_task`` while the bridge's last progress was still on its way.

It also listens on :data:`web.accounts.AUTH_CHANNEL`: a credential change
announced by any process (or the CLI) reaches the hooks' ``auth_changed``.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import socketio

import protocol
import redisurl
from web.accounts import AUTH_CHANNEL

log = logging.getLogger(__name__)

RETRY_FIRST = 0.1   # s before the first re-subscribe attempt
RETRY_CAP = 2.0     # s between attempts at most
PUBSUB_TIMEOUT = 15.0  # s of silence before the subscription is made again (the bridge
                       # publishes metrics every <= 2 s while one is active)
ENDINGS = frozenset(protocol.ENDING_EVENT.values())
PROGRESS = protocol.PROGRESS_UPDATE
ROOM_PREFIX = protocol.task_room("")


class Hooks(Protocol):
    def catch_up(self, manager: MessageQueue) -> None: ...
    def already_ended(self, task_id: str, sids: list[str]) -> list[str]: ...
    def had_ending(self, task_id: str, sids: list[str]) -> list[str]: ...
    def auth_changed(self, data: bytes) -> None: ...


class MessageQueue(socketio.RedisManager):
    """``RedisManager`` with capped re-subscribe back-off, catch-up and ending dedup."""

    name = "skald-redis"

    def __init__(self, url: str, channel: str, **kwargs: Any) -> None:
        self.source_url = url  # REDIS_URL as given; python-socketio sees its own form
        super().__init__(redisurl.socketio_url(url), channel=channel, **kwargs)
        self.hooks: Hooks | None = None
        self.publisher: Any = None  # redis-py client for publishing (see _publish)
        self.subscriptions = 0  # confirmations seen (tests and logs)

    def _publish(self, data: Any) -> Any:
        """Publish on a client of its own, never the listener's.

        python-socketio's own ``_publish`` answers a failed publish by calling
        ``_redis_connect``, which makes a new subscription object under the listener's
        feet: the listener then iterated one with no subscription and this process
        received nothing more (seen with a few hundred watchers connecting at once).
        """
        for attempt in range(2):
            try:
                if self.publisher is None:
                    self.publisher = redisurl.client(self.source_url, **self.redis_options)
                return self.publisher.publish(self.channel, self.json.dumps(data))
            except Exception as exc:  # noqa: BLE001 - any failure: a fresh client, once
                log.error("message queue: cannot publish (%s: %s)%s", type(exc).__name__, exc,
                          "; retrying" if attempt == 0 else "; giving up")
                self.publisher = None
        return None

    def _redis_connect(self) -> None:
        old = self.pubsub
        if old is not None:
            try:
                old.close()
            except Exception as exc:  # noqa: BLE001 - a dead connection may fail to close
                log.debug("closing the old subscription: %s", exc)
        # Every form of REDIS_URL (redisurl.py): Sentinel with its credentials and TLS,
        # which python-socketio's own parser does not know. A silent connection (a
        # master's host cut off) times out and is made again, asking the sentinels anew.
        self.redis = redisurl.client(self.source_url, **{"socket_timeout": PUBSUB_TIMEOUT,
                                                         **self.redis_options})
        # Subscribe confirmations are wanted: each one starts a catch-up.
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=False)
        self.connected = True

    def _redis_listen_with_retries(self):  # pragma: no cover - exercised by real Redis restarts
        delay = RETRY_FIRST
        subscribed = False
        while True:
            try:
                if not subscribed:
                    self._redis_connect()
                    self.pubsub.subscribe(self.channel, AUTH_CHANNEL)
                    subscribed = True
                    delay = RETRY_FIRST
                yield from self.pubsub.listen()
                # listen() ends without an error only when the subscription is gone:
                # make it again rather than iterate an empty one.
                log.warning("message queue: the subscription ended; subscribing again")
                subscribed = False
                time.sleep(delay)
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect after a pause
                log.warning("message queue: cannot receive from Redis (%s); retrying in %.1f s",
                            exc, delay)
                subscribed = False
                time.sleep(delay)
                delay = min(delay * 2, RETRY_CAP)

    def _listen(self):
        channel = self.channel.encode("utf-8")
        auth = AUTH_CHANNEL.encode("utf-8")
        for message in self._redis_listen_with_retries():
            kind, source = message.get("type"), message.get("channel")
            if kind == "message" and source == channel:
                yield message["data"]
            elif kind == "message" and source == auth:
                self._hook("auth_changed", message["data"])
            elif kind == "subscribe" and source == channel:
                self.subscriptions += 1
                if self.subscriptions > 1:
                    log.warning("message queue: subscribed again; catching up the task rooms")
                self._hook("catch_up", self)

    def _hook(self, name: str, *args: Any) -> Any:
        if self.hooks is None:
            return None
        try:
            return getattr(self.hooks, name)(*args)
        except Exception:  # noqa: BLE001 - a hook bug must not stop the listener
            log.exception("message queue hook %s failed", name)
            return None

    def _handle_emit(self, message: dict) -> None:
        room, event = message.get("room"), message.get("event")
        if ((event in ENDINGS or event == PROGRESS) and isinstance(room, str)
                and room.startswith(ROOM_PREFIX) and (message.get("namespace") or "/") == "/"):
            sids = [sid for sid, _eio in self.get_participants("/", room)]
            hook = "already_ended" if event in ENDINGS else "had_ending"
            skip = self._hook(hook, room[len(ROOM_PREFIX):], sids) or []
            if skip:
                earlier = message.get("skip_sid")
                earlier = [earlier] if isinstance(earlier, str) else list(earlier or [])
                message = {**message, "skip_sid": earlier + skip}
        super()._handle_emit(message)
