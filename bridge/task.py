"""One task as the bridge knows it, and how event fields become its values. No I/O.

Event fields come from any worker (or any application on the same broker), so
every value is checked on the way in: numbers must be finite and are clamped
into JSON's safe integer range (a ``10**30`` in an event must not reach a
stored record or an emitted payload, which orjson cannot encode), texts are
trimmed, anything of the wrong type is ignored.
"""
from __future__ import annotations

import ast
import math
import re
import sys
from typing import Any

import orjson

import protocol

TEXT_CAP = 300   # longest outcome text (result or traceback) on the operator view's row
DETAIL_CAP = 64 * 1024  # characters of args, kwargs, result or traceback kept per task in full
NAME_CAP = 200   # longest task name or owner kept
HOST_CAP = 255   # longest worker hostname kept
ERROR_CAP = 1200  # longest error message kept (an image's or a task's)
MAX_INT = 2**53 - 1  # beyond this a JSON number loses precision in JavaScript
_EXC_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\((.*)\)\s*$", re.DOTALL)
_FIRST_INT_RE = re.compile(r"\s*[(\[]\s*(\d+)\s*[,)\]]")
_isfinite = math.isfinite
_PLAIN_STR_RE = re.compile(r"^(['\"])([^'\"\\]*)\1$")  # a quoted text without escapes or quotes


def as_number(value: Any, default: float | None = None) -> float | None:
    """A finite number from an event field, else ``default`` (bools, text, NaN, huge ints)."""
    kind = type(value)  # exact types first: every event field passes here
    if kind is float:
        return value if _isfinite(value) else default  # NaN/Infinity: JSON allows them
    if kind is not int and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return default
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        return default
    return number if _isfinite(number) else default


def as_count(value: Any, default: int | None = None) -> int | None:
    """A count (0..MAX_INT) from an event field: clamped into range, ``default`` if not a number."""
    if type(value) is int and 0 <= value <= MAX_INT:
        return value
    number = as_number(value)
    if number is None:
        return default
    return int(min(max(number, 0.0), MAX_INT))


def as_id(value: Any) -> int | None:
    """An integer id (1..MAX_INT), else None: an id out of range names nothing."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_INT:
        return value
    return None


def as_text(value: Any, cap: int = NAME_CAP) -> str | None:
    """A non-empty string, trimmed to ``cap`` characters; None for anything else."""
    return value[:cap] if isinstance(value, str) and value else None


def as_label(value: Any, cap: int = NAME_CAP) -> str | None:
    """:func:`as_text` for a value many tasks share (a task name, a worker, an owner):
    interned, so each is held once however many tasks name it."""
    text = as_text(value, cap)
    return sys.intern(text) if text is not None else None


def trim(text: Any, keep_end: bool = False) -> str | None:
    """At most ``TEXT_CAP`` characters: the start, or the end (a traceback's useful part)."""
    if text is None:
        return None
    text = str(text)
    if len(text) <= TEXT_CAP:
        return text
    return "\u2026" + text[1 - TEXT_CAP:] if keep_end else text[: TEXT_CAP - 1] + "\u2026"


def keep(text: Any, keep_end: bool = False) -> str | None:
    """A detail text (args, kwargs, result, traceback) up to :data:`DETAIL_CAP` characters."""
    if text is None:
        return None
    text = text if isinstance(text, str) else str(text)
    if len(text) <= DETAIL_CAP:
        return text
    return "\u2026" + text[1 - DETAIL_CAP:] if keep_end else text[: DETAIL_CAP - 1] + "\u2026"


def parse_exception(text: str | None) -> tuple[str, str]:
    """``"ValueError('bad')"`` -> ``("ValueError", "bad")``."""
    if not text:
        return "Error", "the task failed"
    match = _EXC_RE.match(text)
    if not match:
        return "Error", text
    type_, inner = match.group(1), match.group(2)
    plain = _PLAIN_STR_RE.match(inner)
    if plain:  # the common case, without ast.literal_eval's garbage (see first_int_arg)
        return type_.rsplit(".", 1)[-1], plain.group(2)
    try:
        value = ast.literal_eval(inner) if inner else ""
        message = value if isinstance(value, str) else ", ".join(map(str, value)) \
            if isinstance(value, tuple) else str(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        message = inner
    return type_.rsplit(".", 1)[-1], message


def first_int_arg(args: Any) -> int | None:
    """The job id of a caption job: its first positional argument, from a list or from
    Celery's repr of the arguments (``"(7,)"``, ``"[7]"``). A regular expression, not
    ``ast.literal_eval``: that leaves a cycle of closures behind per call, garbage the
    bridge's frozen-GC policy would keep for a quarter of an hour (bench/rss.py)."""
    if isinstance(args, (list, tuple)) and args:
        return as_id(args[0])
    if isinstance(args, str):
        match = _FIRST_INT_RE.match(args)
        return as_id(int(match.group(1))) if match and len(match.group(1)) <= 20 else None
    return None


# Fields of a task-progress event that are not "extra": Celery's envelope and the contract's.
PROGRESS_FIELDS = frozenset({"type", "uuid", "timestamp", "hostname", "pid", "clock", "utcoffset",
                             "local_received", "current", "total", "step", "image", "caption",
                             "eta", "job_id", "owner", "failed"})
EXTRA_KEYS = 16      # extra fields kept per task at most
EXTRA_KEY_CAP = 64   # longest name of an extra field
EXTRA_CAP = 2048     # bytes of JSON the extra fields may take together


def extra_fields(event: dict) -> dict | None:
    """The small extra fields of a task-progress event (any application's), or None.

    At most :data:`EXTRA_KEYS` fields, names up to :data:`EXTRA_KEY_CAP` characters,
    :data:`EXTRA_CAP` bytes of JSON together; a value JSON cannot carry (an integer
    beyond 64 bits) or that would pass the cap is left out, so nothing kept here can
    stop a record or an emit from being encoded."""
    if PROGRESS_FIELDS.issuperset(event):  # the common case: nothing extra
        return None
    kept: dict[str, Any] = {}
    used = 2
    for key, value in event.items():
        if key in PROGRESS_FIELDS or not isinstance(key, str) or len(key) > EXTRA_KEY_CAP:
            continue
        try:
            size = len(orjson.dumps({key: value})) - 1
        except (orjson.JSONEncodeError, TypeError):
            continue
        if used + size > EXTRA_CAP:
            continue
        kept[key] = value
        used += size
        if len(kept) >= EXTRA_KEYS:
            break
    return kept or None


def caption_results(value: Any) -> dict | None:
    """A caption job's return value as an ending carries it (checked), else None."""
    if not isinstance(value, dict) or not isinstance(value.get("captions"), list):
        return None
    captions = [{"image": c["image"], "caption": c["caption"]} for c in value["captions"]
                if isinstance(c, dict) and isinstance(c.get("image"), str)
                and isinstance(c.get("caption"), str)]
    failed_images = value.get("failed_images")
    failures = [{"image": f["image"], "error": as_text(f.get("error"), ERROR_CAP) or ""}
                for f in (failed_images if isinstance(failed_images, list) else [])
                if isinstance(f, dict) and isinstance(f.get("image"), str)]
    out = {"count": as_count(value.get("count"), 0), "failed": as_count(value.get("failed"), 0),
           "captions": captions, "failed_images": failures}
    total = as_count(value.get("total"))
    if total is not None:
        out["total"] = total
    return out


# Detail kept in full for the task explorer (besides args): from task-sent/-received
# (kwargs, retries, eta, expires, parent_id, root_id, queue) and from the ending
# (result, exception, traceback and the ending's time).
FULL_FIELDS = ("kwargs", "retries", "eta", "expires", "parent_id", "root_id", "queue",
               "result", "exception", "traceback", "succeeded_at", "failed_at", "revoked_at")


class Kept:
    """A detail field of a task held in its ``full`` dict (so gone at compaction)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, task: Task | None, owner: type | None = None) -> Any:
        if task is None:
            return self
        return task.full.get(self.name) if task.full else None

    def __set__(self, task: Task, value: Any) -> None:
        task.keep(self.name, value)


class Task:
    """What the bridge knows of one task (slots: memory per task is measured)."""

    args = Kept()     # the args as the worker's event had them (repr, capped)
    outcome = Kept()  # the result or traceback text, trimmed (the operator view's row)

    __slots__ = ("task_id", "name", "state", "job_id", "owner", "current", "total", "failed",
                 "step", "eta", "updated_at", "worker", "received_at", "started_at",
                 "runtime", "cancel_requested", "terminated", "ending", "extra", "seen_at",
                 "full", "indexed")

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.name: str | None = None
        self.state = "PENDING"
        self.job_id: int | None = None
        self.owner: str | None = None
        self.current = 0
        self.total = 0
        self.failed = 0
        self.step = ""
        self.eta: float | None = None
        self.updated_at = 0.0
        self.worker: str | None = None
        self.received_at: float | None = None
        self.started_at: float | None = None
        self.runtime: float | None = None
        self.cancel_requested = False
        self.terminated = False
        self.ending: dict | None = None  # {"event", "payload"} once ended
        self.extra: dict | None = None  # a progress event's small extra fields (extra_fields)
        self.seen_at: float | None = None  # first heard of: the index's "received" (never moves)
        # Detail kept until the final record is stored: args and outcome, and for the
        # explorer kwargs, retries, eta, ... (FULL_FIELDS).
        self.full: dict | None = None
        self.indexed: tuple | None = None  # the index entry last written (bridge/records.py)

    @property
    def ended(self) -> bool:
        return self.state in protocol.TERMINAL_STATES

    @property
    def bucket(self) -> tuple[str, str | None]:
        """(state, name): what the operator view counts it under."""
        return self.state, self.name

    @property
    def compacted(self) -> bool:
        """Ended, stored, and its bulky parts dropped (:meth:`compact`)."""
        return self.ending is None and self.ended

    def keep(self, key: str, value: Any) -> None:
        """Keep one detail field until the final record is stored (None: forget it)."""
        if value is not None:
            if self.full is None:
                self.full = {}
            self.full[key] = value
        elif self.full:
            self.full.pop(key, None)

    def compact(self) -> None:
        """Forget what only the store needs (an ended task is never written again); an
        ended task holds no ending from here on (:attr:`compacted`)."""
        self.ending = self.extra = self.full = None
        self.step = sys.intern(self.step)
        if self.seen_at is not None:  # the index's received time: the other is not needed
            self.received_at = None

    def snapshot(self) -> dict:
        snap = protocol.snapshot(self.task_id, job_id=self.job_id, owner=self.owner,
                                 state=self.state, current=self.current, total=self.total,
                                 current_step=self.step, estimated_completion=self.eta,
                                 updated_at=self.updated_at, failed=self.failed)
        if self.extra:
            snap["extra"] = self.extra
        return snap

    def row(self, snap: dict | None = None) -> dict:
        """The operator view's row (``job_update``'s ``job``); ``snap``: the task's
        snapshot when the caller has just made it (the row copies it)."""
        return protocol.admin_row(snap or self.snapshot(), name=self.name, worker=self.worker,
                                  runtime=self.runtime, terminated=self.terminated)

    def detail(self) -> dict:
        """Admin fields beyond the snapshot."""
        return {"name": self.name, "worker": self.worker, "runtime": self.runtime,
                "received_at": self.received_at, "started_at": self.started_at,
                "seen_at": self.seen_at, "args": self.args, "outcome": self.outcome,
                "failed": self.failed, "cancel_requested": self.cancel_requested,
                "terminated": self.terminated, **(self.full or {})}

    def index_entry(self) -> protocol.IndexEntry:
        """Where this task belongs in the explorer's index (``protocol.IndexEntry``)."""
        return protocol.entry_of(self.state, self.name or "", self.worker or "",
                                 self.seen_at or self.received_at or self.updated_at,
                                 self.started_at, self.runtime)

    def record(self) -> dict:
        """What the store keeps for this task."""
        return {"snapshot": self.snapshot(), "ending": self.ending, "detail": self.detail()}

    @classmethod
    def from_record(cls, record: dict) -> Task:
        """A task from its stored record (values checked as an event's are)."""
        snap = record["snapshot"]
        task = cls(snap["task_id"])
        state = snap.get("state")
        task.state = state if state in protocol.STATES else "PENDING"
        task.job_id = as_id(snap.get("job_id"))
        task.owner = as_label(snap.get("owner"))
        task.current = as_count(snap.get("current"), 0)
        task.total = as_count(snap.get("total"), 0)
        task.step = as_text(snap.get("current_step"), TEXT_CAP) or ""
        task.eta = as_number(snap.get("estimated_completion"))
        task.updated_at = as_number(snap.get("updated_at"), 0.0)
        detail = record.get("detail") or {}
        task.name = as_label(detail.get("name"))
        task.worker = as_label(detail.get("worker"), HOST_CAP)
        task.full = {k: detail[k] for k in FULL_FIELDS if detail.get(k) is not None} or None
        task.args = as_text(detail.get("args"), DETAIL_CAP)
        task.outcome = as_text(detail.get("outcome"), TEXT_CAP)
        for key in ("runtime", "received_at", "started_at", "seen_at"):
            setattr(task, key, as_number(detail.get(key)))
        task.failed = as_count(detail.get("failed"), 0)
        task.cancel_requested = bool(detail.get("cancel_requested"))
        task.terminated = bool(detail.get("terminated"))
        task.ending = record.get("ending") if isinstance(record.get("ending"), dict) else None
        extra = snap.get("extra")
        task.extra = extra_fields(extra) if isinstance(extra, dict) else None
        if task.ended:
            task.compact()  # the store already holds its final record
        task.indexed = task.index_entry()  # what the store's index holds for it
        return task
