"""Skald benchmarks: ``python -m bench.run [--quick] [--only NAME]`` (``make bench``).

Every measurement lives in its own module and starts its own private Redis
(never the shared one on 6379); raw numbers go to ``bench/out/*.json`` and the
summary to ``bench/RESULTS.md``.
"""
