"""Socket.IO watchers in one process: ``python -m bench.sioclient PLAN.json``.

Each watcher is a python-socketio ``AsyncClient`` (aiohttp, websocket
transport) that authenticates with the plan's token and joins its task rooms
with ``join_task``; with ``watch_tokens`` in the plan (one per watcher), watcher
``i`` connects with ``auth={"watch_token": watch_tokens[i]}`` alone instead
(bench/watch.py). Every ``progress_update`` and terminal event received is
recorded as ``[event, task_id, current, updated_at, t_received]``, plus the
payload's ``extra.at`` when it has one.

Commands, one per stdin line, each answered with one JSON line:
``grow N`` (connect watchers until N are up), ``dump`` (receipts since the last
dump), ``count``, ``quit``.
"""
from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

import aiohttp
import socketio

RECORDED = {"progress_update": 0, "task_completed": 1, "task_cancelled": 2, "task_error": 3}


class Watchers:
    def __init__(self, plan: dict) -> None:
        self.url = plan["url"]
        self.token = plan.get("token")
        self.watch_tokens: list[str] | None = plan.get("watch_tokens")
        self.plan: list[list[str]] = plan["watchers"]
        self.clients: list[socketio.AsyncClient] = []
        self.receipts: list[list] = []
        self.failed = 0
        self.errors: dict[str, int] = {}
        self.session: aiohttp.ClientSession | None = None

    def _record(self, event: str, data) -> None:
        code = RECORDED.get(event)
        if code is None or not isinstance(data, dict):
            return
        row = [code, data.get("task_id"), data.get("current"), data.get("updated_at"), time.time()]
        extra = data.get("extra")
        if isinstance(extra, dict) and "at" in extra:  # (another app's progress: bench/watch.py)
            row.append(extra["at"])
        self.receipts.append(row)

    async def _one(self, index: int, sem: asyncio.Semaphore) -> None:
        async with sem:
            client = socketio.AsyncClient(reconnection=False, http_session=self.session)
            client.on("*", self._record)
            try:
                watch = self.watch_tokens[index] if self.watch_tokens else None
                auth = {"watch_token": watch} if watch else {"token": self.token}
                await client.connect(self.url, auth=auth, transports=["websocket"], wait_timeout=30)
                for task_id in self.plan[index]:
                    payload = {"task_id": task_id, **({"watch_token": watch} if watch else {})}
                    ack = await client.call("join_task", payload, timeout=30)
                    if not (isinstance(ack, dict) and ack.get("ok")):
                        raise RuntimeError(f"join refused: {ack}")
                self.clients.append(client)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                self.failed += 1
                key = f"{type(exc).__name__}: {str(exc)[:80]}"
                self.errors[key] = self.errors.get(key, 0) + 1
                try:
                    await client.disconnect()
                except Exception:  # noqa: BLE001
                    pass

    async def grow(self, n: int, timeout: float = 600.0, parallel: int = 64) -> dict:
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        t0 = time.perf_counter()
        start = len(self.clients) + self.failed
        sem = asyncio.Semaphore(parallel)
        tasks = [asyncio.ensure_future(self._one(i, sem)) for i in range(start, min(n, len(self.plan)))]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                self.failed += len(pending)
                self.errors["not connected within the ramp timeout"] = len(pending)
                await asyncio.gather(*pending, return_exceptions=True)
        alive = sum(1 for c in self.clients if c.connected)
        return {"connected": alive, "failed": self.failed, "errors": self.errors,
                "secs": round(time.perf_counter() - t0, 2)}

    async def close(self) -> None:
        await asyncio.gather(*(c.disconnect() for c in self.clients), return_exceptions=True)
        if self.session is not None:
            await self.session.close()


async def main(path: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    with open(path) as fh:
        watchers = Watchers(json.load(fh))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    say({"ready": True})
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        cmd, _, arg = line.partition(" ")
        if cmd == "grow":
            parts = arg.split()
            say(await watchers.grow(int(parts[0]), float(parts[1]) if len(parts) > 1 else 600.0))
        elif cmd == "dump":
            out, watchers.receipts = watchers.receipts, []
            say({"r": out, "connected": sum(1 for c in watchers.clients if c.connected)})
        elif cmd == "count":
            say({"connected": sum(1 for c in watchers.clients if c.connected),
                 "receipts": len(watchers.receipts)})
    try:
        await asyncio.wait_for(watchers.close(), 10)
    except TimeoutError:
        pass
    say({"bye": True})


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
