"""The bridge's Socket.IO messages are exactly what python-socketio's manager writes."""
from __future__ import annotations

import json

import socketio

from bridge.emitter import socketio_message
from protocol import SOCKETIO_CHANNEL


class Capture(socketio.RedisManager):
    def __init__(self) -> None:
        super().__init__("redis://unused", channel=SOCKETIO_CHANNEL, write_only=True)
        self.out: list = []

    def _publish(self, data) -> None:
        self.out.append(data)


def test_message_matches_python_socketio():
    payload = {"task_id": "t", "state": "PROGRESS", "progress_percent": 12.5, "eta": None,
               "last_caption": {"image": "é.png", "caption": "A \"quoted\" caption"},
               "recent_captions": [{"image": "a", "caption": "b"}]}
    manager = Capture()
    manager.emit("progress_update", payload, namespace="/", room="task:t")
    expected = dict(manager.out[0])
    mine = json.loads(socketio_message("progress_update", payload, "task:t", expected["host_id"]))
    assert mine == expected
    # And the web side's decoder reads it back to the same emit.
    assert manager.json.loads(socketio_message("x", payload, "r", "h"))["data"] == [payload]
