"""The contract shared by the bridge and the web process.

What both sides must agree on lives here and nowhere else: task states, room
names, the Socket.IO event names and payload shapes of PROTOCOL.md (one
builder per payload, the ending included), and the layout of what the bridge
keeps in Redis for the web process to read (task records, cluster state,
watcher counts). Pure data and functions, no I/O.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

# -- task states ------------------------------------------------------------------------------
STATES = ("PENDING", "RECEIVED", "STARTED", "PROGRESS", "CANCELLING",
          "SUCCESS", "FAILURE", "REVOKED")
TERMINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})

# -- Socket.IO -----------------------------------------------------------------------------------
# Flask-SocketIO's message-queue channel: the bridge publishes on it, web processes listen.
SOCKETIO_CHANNEL = "flask-socketio"
ADMIN_ROOM = "admin"


def task_room(task_id: str) -> str:
    return f"task:{task_id}"


# Server events (PROTOCOL.md).
CONNECTED = "connected"
PROGRESS_UPDATE = "progress_update"
TASK_COMPLETED = "task_completed"
TASK_CANCELLED = "task_cancelled"
TASK_ERROR = "task_error"
ENDING_EVENT = {"SUCCESS": TASK_COMPLETED, "REVOKED": TASK_CANCELLED, "FAILURE": TASK_ERROR}
JOB_UPDATE = "job_update"
SYSTEM_METRICS_UPDATE = "system_metrics_update"
ADMIN_ALERT = "admin_alert"
MAINTENANCE_STATUS = "maintenance_status"
CAPTION_UPDATED = "caption_updated"  # a caption row changed by a person (PROTOCOL.md, "Reviewing captions")

SNAPSHOT_FIELDS = ("task_id", "job_id", "owner", "state", "progress_percent", "current",
                   "total", "current_step", "estimated_completion", "updated_at")
METRIC_NAMES = ("active_jobs", "queued", "completed_today", "failed_today", "workers_online",
                "events_per_second", "watchers", "system_load")


def percent(current: int, total: int, state: str) -> float:
    if state == "SUCCESS":
        return 100.0
    if total <= 0:
        return 0.0
    return round(min(100.0, 100.0 * current / total), 1)


def snapshot(task_id: str, *, job_id: int | None = None, owner: str | None = None,
             state: str = "PENDING", current: int = 0, total: int = 0,
             current_step: str = "", estimated_completion: float | None = None,
             updated_at: float | None = None, **extra: Any) -> dict[str, Any]:
    """A job's snapshot; ``extra`` fields (e.g. ``failed``) follow the contract's."""
    return {
        "task_id": task_id, "job_id": job_id, "owner": owner, "state": state,
        "progress_percent": percent(current, total, state), "current": current,
        "total": total, "current_step": current_step,
        "estimated_completion": estimated_completion,
        "updated_at": updated_at if updated_at is not None else time.time(),
        **extra,
    }


def ending(snap: dict, *, results: dict | None = None, completed: int = 0,
           error: tuple[str, str] = ("Error", "the task failed"), **extra: Any) -> dict:
    """The terminal event of a task whose snapshot ``snap`` is in a terminal state:
    ``{"event", "payload"}``. ``results`` (SUCCESS), ``completed`` (REVOKED) and
    ``error`` as (type, message) (FAILURE) fill the payload; ``extra`` joins it."""
    state = snap["state"]
    if state == "SUCCESS":
        body: dict[str, Any] = {"results": results or {}}
    elif state == "REVOKED":
        body = {"completed": completed}
    elif state == "FAILURE":
        body = {"error": {"type": error[0], "message": error[1]}}
    else:
        raise ValueError(f"{state} is not a terminal state")
    return {"event": ENDING_EVENT[state], "payload": {**snap, **body, **extra}}


def caption_results(result: dict) -> dict:
    """``task_completed.results`` of a caption job, from the job's return value.

    ``failed_images`` (``[{"image", "error"}]``) is ``[]`` when the value has none
    (a worker older than the field, or a job with no failures)."""
    failed_images = result.get("failed_images")
    return {"count": result.get("count", 0), "failed": result.get("failed", 0),
            "captions": result.get("captions", []),
            "failed_images": failed_images if isinstance(failed_images, list) else []}


RESULT_CAP = 64 * 1024  # bytes of JSON a task's result may take in its ending (PROTOCOL.md)


def task_results(value: Any) -> dict:
    """``task_completed.results`` of any task that is not a caption job: ``{"result": value}``
    (the task's JSON return value). A value over :data:`RESULT_CAP` bytes of JSON, or one
    JSON cannot carry (an integer beyond 64 bits), is ``null`` with ``"result_truncated":
    true`` and its size (``"result_bytes"``, when known)."""
    try:
        size = len(orjson.dumps(value))
    except (orjson.JSONEncodeError, TypeError):
        return {"result": None, "result_truncated": True}
    if size > RESULT_CAP:
        return {"result": None, "result_truncated": True, "result_bytes": size}
    return {"result": value}


def admin_row(snap: dict, *, name: str | None, worker: str | None, runtime: float | None,
              terminated: bool = False) -> dict:
    """A task as the operator view lists it: ``job_update``'s ``job`` and ``GET /api/tasks`` rows."""
    return {**snap, "name": name, "worker": worker, "runtime": runtime,
            "terminated": bool(terminated)}


# -- task records in Redis (written by the bridge, read by web and a restarted bridge) -----------
# skald:task:<id>   {"snapshot": {...}, "ending": {"event", "payload"} | null, "detail": {...}}
# skald:tasks       sorted set of task ids by last update (trimmed to the bridge's task limit)
# skald:tasks:open  set of the ids not yet ended (what reconciliation walks)
TASK_KEY_PREFIX = "skald:task:"
INDEX_KEY = "skald:tasks"
OPEN_KEY = "skald:tasks:open"

Record = dict[str, Any]


def task_key(task_id: str) -> str:
    return f"{TASK_KEY_PREFIX}{task_id}"


def encode_record(record: Record) -> bytes:
    return orjson.dumps(record)


def decode_record(raw: bytes | str | None) -> Record | None:
    """A stored record, or None when absent or not a record."""
    if raw is None:
        return None
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("snapshot"), dict) else None


def record_row(record: Record) -> dict:
    """The operator view's row of a stored record."""
    detail = record.get("detail") or {}
    return admin_row(record["snapshot"], name=detail.get("name"), worker=detail.get("worker"),
                     runtime=detail.get("runtime"), terminated=bool(detail.get("terminated")))


# -- the task explorer's index (bridge/records.py writes it, bridge/store/explorer.py reads it)
# Each "set" below is a chunked sorted set (bridge/records.py: one writer, Lua in the
# publisher's lease-checked script): the key itself is a directory, a sorted set of chunk
# ids scored by the lowest score each chunk covers, and the members live in chunks
# skald:ix:c:<id> (ids from the counter skald:ix:seq) of at most 80 members, so Redis
# keeps every chunk as a listpack (~40 B an entry; a sorted set past 128 members is a
# skiplist, ~128 B an entry). Chunk i holds the scores in [lo_i, lo_i+1): a walk in score
# order goes through the chunks in directory order (bridge/store/explorer.py).
# skald:ix:state:<STATE>    set: member -> received time (one per state)
# skald:ix:name:<name>      set: member -> received time ("" while the name is unknown)
# skald:ix:worker:<host>    set: member -> received time ("" until a worker started it)
# skald:ix:names / :workers plain sorted sets of the facet values above (score 0: lex order)
# skald:ix:started          set: member -> started time (tasks that started)
# skald:ix:runtime          set: member -> runtime (tasks that ended with one)
# Every score is a time or runtime in integer microseconds (ix_score).
# skald:ix:ready            the layout version (IX_VERSION) once the index covers the stored
#                           records; a bridge finding another value (or none) drops every
#                           skald:ix:* key and backfills from the records.
# "updated" is INDEX_KEY's order. "received" is when Skald first heard of the task (its
# task-sent or task-received event, or its submission) and never changes, so a page
# walked by it is stable while tasks arrive and change. A member is the task id's 16 bytes
# when it is a canonical UUID (Redis keeps ~16 bytes less per entry), else the id's text.
IX_PREFIX = "skald:ix:"
IX_NAMES = "skald:ix:names"
IX_WORKERS = "skald:ix:workers"
IX_STARTED = "skald:ix:started"
IX_RUNTIME = "skald:ix:runtime"
IX_READY = "skald:ix:ready"   # IX_VERSION once the index covers the stored records
IX_VERSION = "3"              # 1: plain sorted sets; 2: chunked sets; 3: integer scores (µs)
IX_CHUNK = "skald:ix:c:"      # + chunk id: one chunk of a chunked set
IX_SEQ = "skald:ix:seq"       # the last chunk id given
FACETS = ("state", "name", "worker")
SORTS = ("received", "started", "updated", "runtime", "name", "state")

IndexEntry = tuple[str, str, str, int, int | None, int | None]
"""(state, name, worker, received, started, runtime): where a task sits in the index; the
times as scores (:func:`ix_score`)."""
IX_SCALE = 1_000_000  # index scores are integer microseconds: a listpack compares integers fast
IX_SECONDS_CAP = 9e9  # |seconds| kept: its score stays an exact integer (< 2**53) in Redis


def ix_score(seconds: float) -> int:
    """A time or runtime in seconds as an index score (clamped: an event's 1e30 too)."""
    return round(min(max(seconds, -IX_SECONDS_CAP), IX_SECONDS_CAP) * IX_SCALE)


def entry_of(state: str, name: str, worker: str, received: float, started: float | None,
             runtime: float | None) -> IndexEntry:
    """An index entry from a task's values (times and runtime in seconds)."""
    return (state, name, worker, ix_score(received),
            None if started is None else ix_score(started),
            None if runtime is None else ix_score(runtime))


def facet_key(facet: str, value: str | None) -> str:
    return f"{IX_PREFIX}{facet}:{value or ''}"


def member_of(task_id: str) -> bytes:
    """A task id as an index member (bijective: :func:`task_of_member` undoes it)."""
    if len(task_id) == 36:
        try:
            parsed = uuid.UUID(task_id)
        except ValueError:
            parsed = None
        if parsed is not None and str(parsed) == task_id:
            return parsed.bytes
    raw = task_id.encode()
    return b"\x01" + raw if len(raw) == 16 or raw.startswith(b"\x01") else raw


def task_of_member(member: bytes | str) -> str:
    raw = member.encode() if isinstance(member, str) else member
    if len(raw) == 16:
        return str(uuid.UUID(bytes=raw))
    return (raw[1:] if raw.startswith(b"\x01") else raw).decode(errors="replace")


def received_of(record: Record) -> float:
    """When Skald first heard of a stored record's task (the index's "received")."""
    snap, detail = record["snapshot"], record.get("detail") or {}
    return float(detail.get("seen_at") or detail.get("received_at") or snap.get("updated_at") or 0.0)


def index_entry(record: Record) -> IndexEntry:
    """Where a stored record belongs in the index."""
    snap, detail = record["snapshot"], record.get("detail") or {}
    return entry_of(snap.get("state") or "PENDING", detail.get("name") or "",
                    detail.get("worker") or "", received_of(record), detail.get("started_at"),
                    detail.get("runtime"))


# -- cluster state (written by the bridge each metrics tick) ---------------------------------------
METRICS_KEY = "skald:cluster:metrics"
WORKERS_KEY = "skald:cluster:workers"
STATS_KEY = "skald:cluster:stats"
HISTORY_KEY = "skald:cluster:history"
ALERTS_KEY = "skald:cluster:alerts"
CLUSTER_KEYS = (METRICS_KEY, WORKERS_KEY, STATS_KEY, HISTORY_KEY, ALERTS_KEY)
CLUSTER_TTL = 7 * 24 * 3600   # a bridge gone this long leaves nothing stale behind

# -- watcher counts (each web process writes its own; the bridge sums the fresh ones) ---------------
# skald:watchers  hash {process id: "count:unix time"}
WATCHERS_KEY = "skald:watchers"
WATCHERS_FRESH = 15.0   # s a web process's count stays valid (it writes every 5 s)


def watcher_report(count: int, now: float) -> str:
    return f"{max(0, int(count))}:{now:.3f}"


def parse_watcher_report(raw: bytes | str) -> tuple[int, float] | None:
    """``(count, unix time)`` of one report, or None when it is malformed."""
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        count, stamp = text.split(":", 1)
        return max(0, int(count)), float(stamp)
    except ValueError:
        return None
