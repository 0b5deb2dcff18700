"""Faust vs aiokafka for the log service: ``.venv/bin/python -m bench.logs_compare [--reps 2]``.

Runs ``bench.logs`` (each run on a fresh stack of its own) ``--reps`` times per engine, the engines
alternating, and prints the median of each figure per engine and the faust/aiokafka ratio. The
machine is shared: before each run it polls the 1-minute load average and waits (up to
``--quiet-wait`` seconds) for it to drop below ``--quiet-load``; the load before and after each run
is printed with its figures. Extra arguments after ``--`` go to ``bench.logs``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROWS = [
    ("ingestion, batches of 100: acknowledged (records/s)", lambda r: r["ingest"][0]["ack_rate"], "{:,.0f}"),
    ("ingestion, batches of 100: stored (records/s)", lambda r: r["ingest"][0]["store_rate"], "{:,.0f}"),
    ("ingestion, batches of 1,000: acknowledged (records/s)", lambda r: r["ingest"][1]["ack_rate"], "{:,.0f}"),
    ("ingestion, batches of 1,000: stored (records/s)", lambda r: r["ingest"][1]["store_rate"], "{:,.0f}"),
    ("watch delay p50 (ms)", lambda r: r["watch"]["p50_ms"], "{:.1f}"),
    ("watch delay p99 (ms)", lambda r: r["watch"]["p99_ms"], "{:.1f}"),
    ("consumer alone, records of 100 lines (lines/s)", lambda r: r["consumer_only"][0]["rate"], "{:,.0f}"),
    ("consumer alone, records of 1,000 lines (lines/s)", lambda r: r["consumer_only"][1]["rate"], "{:,.0f}"),
    ("Redis memory (MiB per million records)", lambda r: r["redis_mib_per_million"], "{:,.0f}"),
]


def wait_quiet(limit: float, max_wait: float) -> float:
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(10)
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--engines", default="aiokafka,faust")
    parser.add_argument("--quiet-load", type=float, default=2.0)
    parser.add_argument("--quiet-wait", type=float, default=600.0)
    parser.add_argument("--json", help="write every run's figures to this file")
    args, rest = parser.parse_known_args()
    rest = [a for a in rest if a != "--"]
    runs: dict[str, list[dict]] = {e: [] for e in args.engines.split(",")}
    for rep in range(args.reps):
        for engine in runs:
            load = wait_quiet(args.quiet_load, args.quiet_wait)
            out = tempfile.mktemp(suffix=".json", prefix=f"bench-logs-{engine}-")
            print(f"== {engine} run {rep + 1}/{args.reps} (1-min load {load:.2f}) {' '.join(rest)}", flush=True)
            subprocess.run([sys.executable, "-m", "bench.logs", "--engine", engine, "--json", out, *rest], check=True)
            with open(out) as f:
                runs[engine].append(json.load(f))
            os.unlink(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    engines = list(runs)
    print()
    print("runs (1-min load before → after each):")
    for engine in engines:
        loads = ", ".join(f"{r['load']['before'][0]:.1f}→{r['load']['after'][0]:.1f}" for r in runs[engine])
        print(f"  {engine}: {loads}")
    print()
    print("| measure (median of runs) | " + " | ".join(engines) + (" | faust / aiokafka |" if set(engines) == {"aiokafka", "faust"} else " |"))
    print("|---" * (len(engines) + 1 + (set(engines) == {"aiokafka", "faust"})) + "|")
    for label, get, fmt in ROWS:
        med = {}
        for engine in engines:
            try:
                values = [get(r) for r in runs[engine]]
                med[engine] = statistics.median(values)
                cell = fmt.format(med[engine]) + " (" + ", ".join(fmt.format(v) for v in values) + ")"
            except (IndexError, KeyError):
                cell = "—"
            med.setdefault(engine, float("nan"))
            print_cell = cell
            med[engine + "_cell"] = print_cell
        ratio = f" | {med['faust'] / med['aiokafka']:.2f}" if set(engines) == {"aiokafka", "faust"} and med["aiokafka"] else ""
        print(f"| {label} | " + " | ".join(med[e + "_cell"] for e in engines) + ratio + " |")


if __name__ == "__main__":
    main()
