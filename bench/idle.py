"""What a stack costs doing nothing: ``.venv/bin/python -m bench.idle [--seconds 10] [--rounds 2]``.

Starts ``services.devstack.Stack(own_redis=True)`` with every service of ``runledger dev`` (the
embedded Tansu broker, a private redis-server, transitions, projector, logs, scheduling,
ingress), lets it settle, and measures each process's CPU time (``/proc``) over ``--seconds`` of
no traffic, as milliseconds of CPU per second. ``--compare ENV=VALUE`` runs every round twice,
alternating the stack without and with that environment setting (e.g. ``--compare
RUNLEDGER_IDLE_FETCH_MAX_WAIT_MS=0``), and prints one row per round and stack plus the medians.

Why it matters: the embedded broker's long poll re-checks on a timer instead of waking on data,
so idle consumers cost it (and themselves) CPU; every test stack and ``./run dev`` pays it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from bench.measure import cpu_seconds
from runledger.services.devstack import ALL_SERVICES, Stack

SETTLE_SECONDS = 5.0  # past start-up and the first idle second (the idle fetch wait starts after one)


def measure(extra_env: dict[str, str], seconds: float) -> dict[str, float]:
    """CPU ms per second of each process of an idle stack."""
    with Stack(own_redis=True, partitions=4, services=ALL_SERVICES, extra_env=extra_env) as stack:
        time.sleep(SETTLE_SECONDS)
        names = list(stack.processes)
        before, t0 = cpu_seconds(stack, names), time.monotonic()
        time.sleep(seconds)
        after, elapsed = cpu_seconds(stack, names), time.monotonic() - t0
    per_second = {name: (after[name] - before[name]) * 1000 / elapsed for name in names}
    per_second["total"] = sum(per_second.values())
    return per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per stack")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--compare", metavar="ENV=VALUE", help="also measure a stack with this setting, alternating")
    args = parser.parse_args()

    variants: list[tuple[str, dict[str, str]]] = [("as configured", {})]
    if args.compare:
        key, _, value = args.compare.partition("=")
        variants.append((args.compare, {key: value}))
    rows: list[tuple[str, int, dict[str, float]]] = []
    load_before = os.getloadavg()[0]
    for round_number in range(1, args.rounds + 1):
        for label, env in variants:
            rows.append((label, round_number, measure(env, args.seconds)))
    columns = list(rows[0][2])
    print(f"idle stack, CPU ms per second over {args.seconds:g} s; 1-min load {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("| stack | round | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for label, round_number, figures in rows:
        print(f"| {label} | {round_number} | " + " | ".join(f"{figures[c]:.0f}" for c in columns) + " |")
    if args.rounds > 1:
        for label, _ in variants:
            mine = [figures for name, _, figures in rows if name == label]
            print(f"| {label} | median | " + " | ".join(f"{statistics.median(f[c] for f in mine):.0f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
