"""The sweeper: no job lost when Redis forgets it.

Redis replication is asynchronous, and a Redis restarted without persistence
starts empty: a failover or a restart can lose a queued task message, the
unacknowledged copy of a running job (its worker killed meanwhile), a result,
or a task record. The database's job rows know every job that was submitted,
so the active bridge (one owner, under its lease) sweeps them every
``SWEEP_SECONDS``:

- a job the database does not call ended, with no progress for ``SWEEP_AFTER``
  seconds (job row and task record), no ending in the result backend and no
  message in the broker (queued or unacknowledged) is **suspect**; one still
  suspect at the next sweep is **sent again** with the same task id, args and
  queue (a message moving between a queue and the unacked hash is seen by one
  of two sweeps), with an audit entry and an ``admin_alert``. After
  :data:`MAX_RESUBMITS` sends it is left alone and a critical alert says so.
- a job the database calls ended (within :data:`ENDED_LOOKBACK` s, at least
  ``SWEEP_AFTER`` s ago) whose task record holds no ending has its ending
  **written back** to the result backend (built from the database: captions,
  state, error), and the bridge is asked to track it: its reconciliation then
  ends the watchers' rooms exactly as for any ending the stream lost.

:func:`decide` is the pure rule (job rows plus what Redis says, out: what to
do); :class:`Sweeper` is the thin loop around it (database, Redis, broker I/O).
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import redis
from celery import Celery
from celery.exceptions import CeleryError
from kombu.exceptions import KombuError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

import redisurl
from bridge import reconcile
from bridge.commands import send_track
from bridge.store import SnapshotStore
from protocol import TERMINAL_STATES
from settings import Settings
from tasks import wire
from tasks.events import CAPTION_TASK_NAME
from tasks.models import AuditEntry, Job, User

log = logging.getLogger("bridge.sweeper")

MAX_RESUBMITS = 3          # sends by the sweeper per job at most
ENDED_LOOKBACK = 3600.0    # s: endings older than this are not checked any more
ROWS = 500                 # job rows looked at per sweep and kind at most
SCAN_MAX = 100_000         # queued messages searched for a task id; a longer queue: "cannot tell"
SCAN_CHUNK = 1000
PRIORITY_STEPS = (0, 3, 6, 9)  # kombu's Redis transport: one list per priority step
UNACKED_KEY = "unacked"    # kombu's Redis transport: messages delivered and not yet acknowledged
AUDIT_USER = "sweeper"


# -- the pure rule --------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobRow:
    task_id: str
    job_id: int
    state: str
    updated_at: float
    finished_at: float | None = None
    queue: str = "celery"
    resubmitted: int = 0
    owner: str = ""
    total: int = 0


@dataclass(frozen=True)
class Seen:
    """What Redis says of one job: the bridge's record (state, last update, whether it holds
    an ending), the result backend's status, and whether the broker holds its message
    (None: cannot tell, e.g. a queue too long to search or a broker that is not Redis)."""

    record_state: str | None = None
    record_updated: float | None = None
    backend_status: str | None = None
    in_broker: bool | None = None


@dataclass(frozen=True)
class JobDecision:
    job: JobRow
    reason: str


class Resubmit(JobDecision):
    """Send the job again (its message and its ending are both lost)."""


class Suspect(JobDecision):
    """It looks lost; sent again if the next sweep agrees."""


class GiveUp(JobDecision):
    """Sent again too often: recorded failed."""


@dataclass(frozen=True)
class RestoreEnding:
    job: JobRow
    write_backend: bool  # the backend lacks the ending too


Decision = Resubmit | Suspect | GiveUp | RestoreEnding


def decide(jobs: Iterable[JobRow], seen: dict[str, Seen], now: float, *, sweep_after: float,
           suspects: set[str] = frozenset(), max_resubmits: int = MAX_RESUBMITS) -> list[Decision]:
    """What to do about each job (nothing: left out). ``suspects``: the ids the previous
    sweep found lost (a job is sent again only when two sweeps in a row agree)."""
    out: list[Decision] = []
    for job in jobs:
        s = seen.get(job.task_id, Seen())
        if job.state in TERMINAL_STATES:
            ended_at = job.finished_at or job.updated_at
            if s.record_state in TERMINAL_STATES or now - ended_at < sweep_after:
                continue
            if now - ended_at <= ENDED_LOOKBACK + sweep_after:
                out.append(RestoreEnding(job, write_backend=s.backend_status not in TERMINAL_STATES))
            continue
        if s.backend_status in TERMINAL_STATES or s.record_state in TERMINAL_STATES:
            continue  # it ended; the database has not heard (not the sweeper's to fix)
        last = max(job.updated_at, s.record_updated or 0.0)
        if now - last < sweep_after or s.in_broker is not False:
            continue  # progress lately, or the broker still holds it (or cannot say)
        reason = _reason(job, s, now - last)
        if job.resubmitted >= max_resubmits:
            out.append(GiveUp(job, reason))
        elif job.task_id in suspects:
            out.append(Resubmit(job, reason))
        else:
            out.append(Suspect(job, reason))
    return out


def _reason(job: JobRow, s: Seen, quiet: float) -> str:
    record = "no task record" if s.record_state is None else f"task record {s.record_state}"
    backend = "no result" if s.backend_status is None else f"result backend {s.backend_status}"
    return (f"{job.state} for {quiet:.0f}s with no progress, {record}, {backend} "
            f"and no message in the broker")


# -- the loop ----------------------------------------------------------------------------------------
class Sweeper:
    """The periodic sweep of the active bridge (a thread of its own; see the module docstring).

    ``alert(level, kind, message, extra)`` hands an ``admin_alert`` to the bridge's loop.
    """

    def __init__(self, settings: Settings, app: Celery, client: redis.Redis,
                 alert: Callable[[str, str, str, dict], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.app = app
        self.client = client
        self.store = SnapshotStore(client)
        self.alert = alert
        self.clock = clock
        url = settings.broker_url
        self.broker = (client if url == settings.redis_url else redisurl.client(url)) \
            if wire.is_redis(url) else None
        self.suspects: set[str] = set()
        self.restored: OrderedDict[str, None] = OrderedDict()  # endings already written back
        self.sweeps = 0

    def run(self, stop: threading.Event) -> None:
        """Sweep every ``sweep_seconds`` until ``stop`` is set (the lease lost, or shutdown)."""
        while not stop.wait(self.settings.sweep_seconds):
            try:
                self.sweep()
            except (redis.RedisError, SQLAlchemyError, KombuError, CeleryError, OSError) as exc:
                log.warning("sweep failed (%s: %s); next one in %.0fs", type(exc).__name__, exc,
                            self.settings.sweep_seconds)

    def sweep(self) -> list[Decision]:
        now = self.clock()
        jobs = self._rows(now)
        ids = [j.task_id for j in jobs]
        records = self.store.get_many(ids) if ids else {}
        metas = reconcile.backend_metas(self.app, ids) if ids else {}
        seen = {}
        for job in jobs:
            rec = (records.get(job.task_id) or {}).get("snapshot") or {}
            status = (metas.get(job.task_id) or {}).get("status")
            seen[job.task_id] = Seen(record_state=rec.get("state"), record_updated=rec.get("updated_at"),
                                     backend_status=status)
        open_stale = [j for j in jobs if j.state not in TERMINAL_STATES
                      and seen[j.task_id].backend_status not in TERMINAL_STATES
                      and now - max(j.updated_at, seen[j.task_id].record_updated or 0) >= self.settings.sweep_after]
        if open_stale:
            held = self._broker_ids({j.queue for j in open_stale})
            for job in open_stale:
                ids = held.get(job.queue)
                seen[job.task_id] = replace(seen[job.task_id],
                                            in_broker=None if ids is None else job.task_id in ids)
        decisions = decide(jobs, seen, now, sweep_after=self.settings.sweep_after, suspects=self.suspects)
        self.suspects = {d.job.task_id for d in decisions if isinstance(d, Suspect)}
        for decision in decisions:
            self._carry_out(decision, now)
        self.sweeps += 1
        return decisions

    def _rows(self, now: float) -> list[JobRow]:
        from tasks.db import session_scope

        after = self.settings.sweep_after
        with session_scope(self.settings.database_url) as db:
            base = select(Job, User.name).join(User, User.id == Job.owner_id)
            open_rows = db.execute(base.where(Job.state.not_in(TERMINAL_STATES),
                                              Job.updated_at <= now - after)
                                   .order_by(Job.updated_at).limit(ROWS)).all()
            ended = db.execute(base.where(Job.state.in_(TERMINAL_STATES),
                                          Job.finished_at <= now - after,
                                          Job.finished_at >= now - after - ENDED_LOOKBACK)
                               .order_by(Job.finished_at.desc()).limit(ROWS)).all()
            return [JobRow(task_id=j.task_id, job_id=j.id, state=j.state, updated_at=j.updated_at,
                           finished_at=j.finished_at, queue=j.queue or "celery",
                           resubmitted=j.resubmitted or 0, owner=owner, total=j.total)
                    for j, owner in [*open_rows, *ended] if j.task_id not in self.restored]

    def _broker_ids(self, queues: set[str]) -> dict[str, set[str] | None]:
        """The task ids the broker holds per queue: delivered and unacknowledged ones (any
        queue) plus each queue's waiting messages; None for a queue that cannot be told
        (longer than :data:`SCAN_MAX`, or a broker that is not Redis). One pass per sweep."""
        if self.broker is None:
            return dict.fromkeys(queues)
        unacked = message_ids(self.broker.hvals(UNACKED_KEY))
        out: dict[str, set[str] | None] = {}
        for queue in queues:
            ids: set[str] | None = set(unacked)
            for step in PRIORITY_STEPS:
                key = queue if step == 0 else f"{queue}\x06\x16{step}"
                length = self.broker.llen(key)
                if length > SCAN_MAX:
                    ids = None
                    break
                for start in range(0, length, SCAN_CHUNK):
                    ids |= message_ids(self.broker.lrange(key, start, start + SCAN_CHUNK - 1))
            out[queue] = ids
        return out

    # -- effects ---------------------------------------------------------------------------------------
    def _carry_out(self, decision: Decision, now: float) -> None:
        job = decision.job
        if isinstance(decision, Suspect):
            log.info("job %s looks lost (%s); resubmitting at the next sweep if still so",
                     job.task_id, decision.reason)
        elif isinstance(decision, Resubmit):
            self._resubmit(job, decision.reason, now)
        elif isinstance(decision, GiveUp):
            if job.task_id not in self.restored:
                self.restored[job.task_id] = None
                log.error("job %s still lost after %d resubmits: %s", job.task_id,
                          job.resubmitted, decision.reason)
                self.alert("critical", "job_lost", f"job {job.task_id} is lost and was resubmitted "
                           f"{job.resubmitted} times already: {decision.reason}",
                           {"task_id": job.task_id, "job_id": job.job_id})
        elif isinstance(decision, RestoreEnding):
            self._restore(job, decision.write_backend)

    def _resubmit(self, job: JobRow, reason: str, now: float) -> None:
        from tasks.db import session_scope

        self.app.send_task(CAPTION_TASK_NAME, args=[job.job_id], task_id=job.task_id, queue=job.queue)
        send_track(self.client, job.task_id, job.job_id, job.owner, job.total)
        attempt = job.resubmitted + 1
        with session_scope(self.settings.database_url) as db:
            row = db.get(Job, job.job_id)
            if row is not None:
                row.resubmitted = attempt
                row.updated_at = now  # a fresh SWEEP_AFTER before it can look lost again
            audit(db, "job.resubmit", job.task_id, {"reason": reason, "state": job.state,
                                                    "queue": job.queue, "attempt": attempt})
        log.warning("resubmitted job %s (attempt %d): %s", job.task_id, attempt, reason)
        self.alert("warning", "job_resubmitted", f"job {job.task_id} was lost by the broker and "
                   f"sent again ({reason})", {"task_id": job.task_id, "job_id": job.job_id,
                                              "attempt": attempt})

    def _restore(self, job: JobRow, write_backend: bool) -> None:
        from tasks.db import session_scope

        if write_backend:
            backend = self.app.backend
            with session_scope(self.settings.database_url) as db:
                row = db.get(Job, job.job_id)
                if row is None:
                    return
                result, error = job_result(row, job.owner), row.error
            # Celery's Redis backend never writes over a stored SUCCESS.
            if job.state == "SUCCESS":
                backend.store_result(job.task_id, result, "SUCCESS")
            elif job.state == "REVOKED":
                backend.mark_as_revoked(job.task_id, "cancelled")
            else:
                backend.mark_as_failure(job.task_id, RuntimeError(error or "the job failed"))
        send_track(self.client, job.task_id, job.job_id, job.owner, job.total)
        self.restored[job.task_id] = None
        while len(self.restored) > 10 * ROWS:
            self.restored.popitem(last=False)
        log.warning("job %s ended %s in the database but Redis had lost it: written back",
                    job.task_id, job.state)


_MESSAGE_ID = re.compile(rb'"id": ?"([0-9A-Za-z-]{1,64})"')


def message_ids(raws: Iterable[bytes]) -> set[str]:
    """The task ids of kombu messages as the Redis transport stores them (the first
    ``"id"`` is the headers' task id; the body is base64 and holds none)."""
    out = set()
    for raw in raws:
        found = _MESSAGE_ID.search(raw) if isinstance(raw, bytes) else None
        if found:
            out.add(found.group(1).decode())
    return out


def job_result(job: Job, owner: str) -> dict:
    """A caption job's return value (tasks/caption.py ``run_images``) rebuilt from its rows."""
    captions, failed_images = [], []
    for image in job.images:
        cap = image.caption
        if cap is None:
            continue
        if cap.error is not None:
            failed_images.append({"image": image.name, "error": cap.error})
        if cap.text is not None:
            captions.append({"image": image.name, "caption": cap.text})
    done = sum(1 for image in job.images if image.caption is not None)
    return {"job_id": job.id, "count": done - len(failed_images), "failed": len(failed_images),
            "total": job.total, "captions": captions, "failed_images": failed_images, "owner": owner}


def audit(db, action: str, target: str, params: dict) -> None:
    """An audit entry by the sweeper (the layout of web/audit.py, which the bridge may not import)."""
    db.add(AuditEntry(user=AUDIT_USER, action=action, target=target[:255],
                      params=json.dumps(params, sort_keys=True, default=str)[:4096], result="sent"))
