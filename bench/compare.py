"""Before and after a change: the summary table of an earlier tree's run beside this one's.

``BENCH_BEFORE=/path/to/other/checkout/bench/out python -m bench.run --only compare``
reads that tree's raw results (its own ``make bench``, run right before or after
this tree's on the same machine) and keeps them in ``bench/out/compare.json``;
RESULTS.md then shows each target's figure from both runs side by side, rendered
by this tree's report code from each run's JSON. Opt-in: it measures nothing
itself.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from bench import report


def run(quick: bool = False) -> dict:
    source = os.environ.get("BENCH_BEFORE")
    if not source:
        raise RuntimeError("set BENCH_BEFORE to the other tree's bench/out directory")
    out = Path(source)
    before = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    if not before:
        raise RuntimeError(f"no benchmark results in {out}")
    try:
        commit = subprocess.run(["git", "-C", str(out), "log", "-1", "--format=%h %s"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"before": before, "before_commit": commit}


def _rows(data: dict) -> dict[str, tuple[str, str]]:
    table = report._targets(data).splitlines()[4:]  # past the heading and the header rows
    rows = {}
    for line in table:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if len(cells) == 3:
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def section(x: dict) -> str:
    before, after = x["before"], report.load()
    b_rows, a_rows = _rows(before), _rows(after)
    b_run, a_run = before.get("run") or {}, after.get("run") or {}
    out = ["## Before and after (the same targets, two runs back to back)", "",
           f"Before: `{x.get('before_commit') or 'the earlier tree'}`, run finished "
           f"{b_run.get('finished', '?')} ({report.f(b_run.get('seconds'))} s). After: this tree, "
           f"run finished {a_run.get('finished', '?')} ({report.f(a_run.get('seconds'))} s). "
           "Same machine, one right after the other; figures within a row come from different "
           "runs, so only differences well beyond the spread of each section's rounds count.", "",
           "| target | before | after |", "|---|---|---|"]
    for target, (measured, verdict) in a_rows.items():
        if target in b_rows:
            out.append(f"| {target} | {b_rows[target][0]} ({b_rows[target][1]}) | "
                       f"{measured} ({verdict}) |")
    return "\n".join(out)
