"""One captioning child process per pool process, so no image can hold a worker past its budget.

Python's ``re`` and C decoders cannot be interrupted by a signal, so the
pool process does not caption itself: it starts ``python -m
tasks.captioners.isolation`` once (lazily, at its first image), sends it
one image at a time as a JSON line and waits for the answer with a
deadline of ``IMAGE_TIME_BUDGET`` seconds. The child loads the models once
and keeps them. When it overruns, crashes or is killed by the kernel
(its address space is capped at ``CAPTION_MEMORY_MB``, so a decompression
bomb cannot take the host's memory), the pool process kills what is left,
that image fails with a clear error, and the next image starts a fresh
child. A cancel is passed on (``{"stop": true}``) and the child stops
between stages; one that does not answer within :data:`STOP_GRACE` is
killed.

Wire (one JSON object a line): child -> ``{"ready", "captioner",
"stages", "load_seconds"}`` once, then per request ``{"id", "path"}`` one of
``{"id", "ok": true, "text", "captioner", "stages"}``, ``{"id", "ok":
false, "error"}``, ``{"id", "cancelled": true}``; ``"exiting": true`` when
the child leaves after answering (a stage thread overran).
"""
from __future__ import annotations

import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import IO, Any

from settings import Settings, load_settings
from tasks.captioners import (
    CaptionCancelled,
    Captioned,
    CaptionerUnavailable,
    ImageUnreadable,
    StopCheck,
    get_captioner,
)

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0   # s for a child to start and load its models
STOP_GRACE = 3.0        # s a child has to stop after a cancel before it is killed
STOP_POLL = 0.25        # s between checks of the job's cancel flag while an image is captioned
MAX_LINE = 1 << 20
CHILD_SETTINGS = ("captioner", "max_image_pixels", "stage_time_budget", "caption_memory_mb",
                  "caption_stages")


class _ChildGone(Exception):
    pass


class IsolatedCaptioner:
    """The worker side: captions through the child, restarting it whenever it had to be killed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.captioner
        self.budget = settings.image_time_budget
        self.proc: subprocess.Popen | None = None
        self.ready: dict[str, Any] = {}
        self._buffer = b""
        self._seq = 0
        self.last_reply: dict[str, Any] = {}  # the child's last answer (with its timings)

    # -- the child's life ----------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Start the child and wait until its models are loaded; its ``ready`` message."""
        if self.proc is not None and self.proc.poll() is None:
            return self.ready
        env = {**os.environ, **child_environment(self.settings),
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        self._buffer = b""
        self.proc = subprocess.Popen([sys.executable, "-m", "tasks.captioners.isolation"], cwd=ROOT,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     close_fds=True)
        try:
            self.ready = self._read(time.monotonic() + START_TIMEOUT, None)
        except (_ChildGone, TimeoutError) as exc:
            self.close()
            raise CaptionerUnavailable(f"the captioning process did not start: {exc}") from exc
        log.info("captioning process %s ready: %s (stages %s, models loaded in %s s)", self.proc.pid,
                 self.ready.get("captioner"), ", ".join(self.ready.get("stages") or []) or "none",
                 self.ready.get("load_total"))
        return self.ready

    def close(self) -> None:
        """Stop the child (its stdin closes; it is killed if it does not leave at once)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(1.0)
        except (OSError, subprocess.TimeoutExpired):
            _kill(proc)
        finally:
            if proc.stdout:
                proc.stdout.close()

    # -- one image -----------------------------------------------------------------------------
    def caption(self, path: Path, should_stop: StopCheck) -> Captioned:
        self.start()
        self._seq += 1
        try:
            self._send({"id": self._seq, "path": str(path)})
            reply = self._read(time.monotonic() + self.budget, should_stop)
        except TimeoutError:
            self._abandon()
            raise ImageUnreadable(f"captioning this image took longer than IMAGE_TIME_BUDGET "
                                  f"({self.budget:g} s); it was stopped") from None
        except CaptionCancelled:
            raise
        except (_ChildGone, OSError) as exc:
            self._abandon()
            raise ImageUnreadable(f"this image crashed the captioning process ({exc})") from None
        self.last_reply = reply
        if reply.get("exiting"):
            self.close()
        if reply.get("cancelled"):
            raise CaptionCancelled("cancelled while captioning")
        if not reply.get("ok"):
            raise ImageUnreadable(str(reply.get("error") or "the image could not be captioned"))
        return Captioned(str(reply["text"]), str(reply.get("captioner") or self.name),
                         tuple(reply.get("stages") or ()))

    def _abandon(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            _kill(proc)
            for stream in (proc.stdin, proc.stdout):
                try:
                    if stream:
                        stream.close()
                except OSError:
                    pass

    def _send(self, message: dict) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def _read(self, deadline: float, should_stop: StopCheck | None) -> dict:
        """The child's next message, polling ``should_stop``; TimeoutError past ``deadline``."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        next_check = time.monotonic()  # at once, then every STOP_POLL
        while b"\n" not in self._buffer:
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError("no answer in time")
            if should_stop is not None and now >= next_check:
                next_check = now + STOP_POLL
                if should_stop():
                    return self._stop()
            readable, _, _ = select.select([fd], [], [], min(STOP_POLL, deadline - now))
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise _ChildGone(_exit_text(self.proc))
                self._buffer += chunk
                if len(self._buffer) > MAX_LINE:
                    raise _ChildGone("it sent an oversized answer")
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _stop(self) -> dict:
        """Pass a cancel on; the child's answer, or kill it after the grace period."""
        try:
            self._send({"stop": True})
            reply = self._read(time.monotonic() + STOP_GRACE, None)
        except (TimeoutError, _ChildGone, OSError):
            self._abandon()
            raise CaptionCancelled("cancelled; the captioning process was stopped") from None
        if reply.get("exiting"):
            self.close()
        if reply.get("cancelled"):
            raise CaptionCancelled("cancelled while captioning")
        return reply  # it finished just before the cancel: keep the caption


def child_environment(settings: Settings) -> dict[str, str]:
    """The settings the child needs, as environment variables (it reads them with load_settings)."""
    variables = {f.name: f.metadata["env"] for f in fields(Settings)}
    out = {}
    for name in CHILD_SETTINGS:
        value = getattr(settings, name)
        out[variables[name]] = ",".join(value) if isinstance(value, tuple) else str(value)
    return out


def _kill(proc: subprocess.Popen) -> None:
    try:
        proc.kill()
        proc.wait(5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not reap captioning process %s: %s", proc.pid, exc)


def _exit_text(proc: subprocess.Popen) -> str:
    try:
        code = proc.wait(2)
    except subprocess.TimeoutExpired:
        return "it closed its output"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# ==================================================================================================
# the child
# ==================================================================================================
def _limit_memory(megabytes: int) -> None:
    if megabytes <= 0:
        return
    import resource

    limit = megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _reader(stdin: IO[bytes], requests: queue.Queue, stop: threading.Event) -> None:
    """Requests into the queue; a stop message sets ``stop``; the parent gone ends the process."""
    for raw in stdin:
        try:
            message = json.loads(raw)
        except ValueError:
            continue
        if message.get("stop"):
            stop.set()
        else:
            stop.clear()  # here, in the order the parent wrote: a stop always follows its request
            requests.put(message)
    os._exit(0)  # the pool process closed our stdin or died: nothing more to do


def _answer(captioner: Any, message: dict, stop: threading.Event) -> dict:
    reply: dict[str, Any] = {"id": message.get("id")}
    try:
        made = captioner.caption(Path(str(message.get("path"))), stop.is_set)
        reply.update(ok=True, text=made.text, captioner=made.captioner, stages=list(made.stages))
    except CaptionCancelled:
        reply["cancelled"] = True
    except ImageUnreadable as exc:
        reply.update(ok=False, error=str(exc))
    except MemoryError:
        reply.update(ok=False, error="this image needs more memory than CAPTION_MEMORY_MB allows")
    except Exception as exc:  # noqa: BLE001 - whatever one image causes fails that image only
        log.exception("captioning %s failed", message.get("path"))
        reply.update(ok=False, error=f"captioning failed: {type(exc).__name__}: {exc}")
    if getattr(captioner, "tainted", False):
        reply["exiting"] = True
    if getattr(captioner, "last_timings", None):
        reply["timings"] = captioner.last_timings
    return reply


def main() -> int:
    """``python -m tasks.captioners.isolation``: serve caption requests on stdin/stdout."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the answers
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="[%(asctime)s: %(levelname)s/captioner-%(process)d] %(message)s")
    settings = load_settings()
    _limit_memory(settings.caption_memory_mb)
    started = time.monotonic()
    captioner = get_captioner(settings)
    stages: list[str] = []
    if hasattr(captioner, "load"):
        stages = captioner.load()
        if not captioner.usable():
            log.warning("CAPTIONER=local: no stage of local could load; captions fall back to basic")
    name = captioner.name if not hasattr(captioner, "load") or stages else "basic"
    out.write(json.dumps({"ready": True, "captioner": name, "stages": stages,
                          "load_seconds": getattr(captioner, "load_seconds", {}),
                          "load_total": round(time.monotonic() - started, 3)}).encode() + b"\n")
    requests: queue.Queue = queue.Queue()
    stop = threading.Event()
    threading.Thread(target=_reader, args=(sys.stdin.buffer, requests, stop), daemon=True).start()
    while True:
        message = requests.get()
        reply = _answer(captioner, message, stop)
        out.write(json.dumps(reply).encode() + b"\n")
        if reply.get("exiting"):
            os._exit(0)  # a stage thread may still run: leave, the next image gets a clean process


if __name__ == "__main__":
    sys.exit(main())
