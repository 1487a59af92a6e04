"""Run the benchmark suite: ``python -m bench.run [--quick] [--only NAME[,NAME...]]``.

Each benchmark writes its raw numbers to ``bench/out/NAME.json``; then
``bench/RESULTS.md`` is written from the latest JSON of every benchmark (so
``--only`` refreshes one section and keeps the others). ``--quick`` is a
smoke run (smaller streams, fewer rounds; its figures are not the ones to
quote). A benchmark that fails is reported and the others still run.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

from bench import common, report

ORDER = ["ingest", "latency", "watchers", "memory", "cancel", "overhead", "rss", "captioner", "watch", "explorer"]
# Run only when named with --only (failover needs more than the default run may take: root,
# network namespaces and haproxy; compare needs another tree's results); their sections
# are kept in RESULTS.md.
OPT_IN = ["failover", "compare"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {ORDER + OPT_IN} "
                        f"(opt-in, never run by default: {OPT_IN})")
    parser.add_argument("--no-report", action="store_true", help="do not rewrite RESULTS.md")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or ORDER
    unknown = set(names) - set(ORDER) - set(OPT_IN)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    common.raise_nofile()
    import signal

    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so every benchmark stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = "python -m bench.run" + (" --quick" if args.quick else "") + \
        (f" --only {args.only}" if args.only else "")
    started = time.time()
    failed = []
    for name in names:
        t0 = time.time()
        print(f"[bench] {name} ...", flush=True)
        try:
            data = importlib.import_module(f"bench.{name}").run(quick=args.quick)
            data["ok"] = True
        except Exception as exc:  # noqa: BLE001 - report it, run the rest
            traceback.print_exc()
            data = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
        data.update({"name": name, "quick": args.quick, "seconds": round(time.time() - t0, 1),
                     "command": command, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
        common.write_json(name, data)
        print(f"[bench] {name} done in {data['seconds']} s", flush=True)
    total = round(time.time() - started, 1)
    # run.json describes the last full-suite run (the RESULTS.md header); --only runs are
    # recorded apart so a refreshed section does not relabel the whole file.
    common.write_json("run" if not args.only else "run-only", {"command": command, "names": names, "seconds": total,
                              "quick": args.quick, "failed": failed,
                              "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    if not args.no_report:
        path = report.write()
        print(f"[bench] wrote {path}", flush=True)
    print(f"[bench] total {total} s" + (f"; failed: {', '.join(failed)}" if failed else ""),
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
