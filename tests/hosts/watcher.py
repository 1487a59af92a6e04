"""The watcher host's program: Socket.IO clients that watch jobs and write down everything.

``python -m tests.hosts.watcher --url URL --token T --out FILE [--clients N]
[--transport websocket|polling] [--timeout S] TASK_ID...``

Each client joins every task, and after every reconnect joins again each task
it has not seen end (what the CLI does), so a watcher whose web host died
rejoins through the load balancer. Every event is one JSON line in ``FILE``
(``connect``/``disconnect`` too), flushed at once so the test can read it
while this runs. It exits 0 once every client saw an ending of every task and
a short quiet time passed (room for a duplicate to show up), 1 on timeout.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import socketio

ENDINGS = ("task_completed", "task_cancelled", "task_error")
QUIET = 1.5  # s after the last ending: a duplicate or a late progress would show up here


class Recorder:
    def __init__(self, path: str) -> None:
        self.file = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def write(self, **item: object) -> None:
        item["t"] = time.time()
        with self.lock:
            self.file.write(json.dumps(item) + "\n")


class Client:
    def __init__(self, n: int, args: argparse.Namespace, rec: Recorder) -> None:
        self.n = n
        self.args = args
        self.rec = rec
        self.ended: set[str] = set()
        self.sio = socketio.Client(reconnection=True, reconnection_delay=0.2,
                                   reconnection_delay_max=1, handle_sigint=False)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", lambda *a: rec.write(client=n, event="disconnect"))
        self.sio.on("*", self._on_event)

    def _on_connect(self) -> None:
        self.rec.write(client=self.n, event="connect", transport=self.sio.transport())
        for tid in self.args.task_ids:
            if tid not in self.ended:
                self.sio.emit("join_task", {"task_id": tid}, callback=self._ack(tid))

    def _ack(self, tid: str):
        def done(ack: object = None) -> None:
            ok = isinstance(ack, dict) and ack.get("ok")
            self.rec.write(client=self.n, event="join_ack", task_id=tid, ok=bool(ok),
                           error=None if ok else ack)
        return done

    def _on_event(self, event: str, data: object = None) -> None:
        d = data if isinstance(data, dict) else {}
        tid = d.get("task_id")
        if event in ENDINGS and tid:
            self.ended.add(tid)
        self.rec.write(client=self.n, event=event, task_id=tid, state=d.get("state"),
                       current=d.get("current"), total=d.get("total"))

    def connect(self) -> None:
        self.sio.connect(self.args.url, auth={"token": self.args.token},
                         transports=[self.args.transport], wait_timeout=10)

    def done(self) -> bool:
        return self.ended >= set(self.args.task_ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hosts.watcher")
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--transport", default="websocket", choices=["websocket", "polling"])
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("task_ids", nargs="+")
    args = parser.parse_args(argv)
    rec = Recorder(args.out)
    clients = [Client(i, args, rec) for i in range(args.clients)]
    for c in clients:
        c.connect()
    rec.write(event="ready")
    deadline = time.monotonic() + args.timeout
    while not all(c.done() for c in clients):
        if time.monotonic() > deadline:
            rec.write(event="timeout")
            return 1
        time.sleep(0.05)
    time.sleep(QUIET)
    rec.write(event="finished")
    for c in clients:
        c.sio.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
