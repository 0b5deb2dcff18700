"""Scheduling benchmark: ``.venv/bin/python -m bench.scheduling [--runs 10000] [--window 60] [--agents 4]``.

On its own stack (``services.devstack.Stack``: embedded Tansu broker, private redis-server,
transitions, projector, ingress and the scheduling service as separate processes, service logs
at WARNING; or ``--url`` for a running stack with a scheduling service) it measures:

1. queue delay: ``--runs`` flow runs scheduled evenly over ``--window`` seconds (created ahead
   of time, ``--lead`` seconds before the first start), polled by ``--agents`` agents exactly as
   the Prefect 1.4.1 agent does (GraphQL ``get_runs_in_queue`` with the agent's labels and
   ``before`` = now, then ``set_flow_run_states`` ``Submitted`` with the version it saw, the
   losers of a race skipping on "State update failed"; an empty poll sleeps ``--idle`` s). The
   delay of a run is from its start time to the first poll answer that contains it; p50/p99/max
   over every run whose start time came after it was created;
2. claims/s: ``--claim-runs`` runs already due, the same agents polling and claiming with
   ``--claim-conc`` claims in flight each; successful claims divided by the wall time until
   every run is claimed (lost races are counted apart).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
import uuid
from datetime import datetime, timedelta, timezone

import aiohttp

from bench.measure import cpu_seconds, pct

CPU_PROCESSES = ("ingress", "transitions", "projector", "scheduling", "broker", "redis")
POLL = "mutation($input: get_runs_in_queue_input!) { get_runs_in_queue(input: $input) { flow_run_ids } }"
CLAIM = "mutation($input: set_flow_run_states_input!) { set_flow_run_states(input: $input) { states { id status } } }"
REGISTER = "mutation($input: register_agent_input!) { register_agent(input: $input) { id } }"


async def gql(http, url, query, variables, agent_id=None):
    headers = {"X-PREFECT-AGENT-ID": agent_id} if agent_id else {}
    async with http.post(f"{url}/graphql", json={"query": query, "variables": variables}, headers=headers) as r:
        return await r.json()


async def create_runs(http, api, flow_id, label, starts, conc=32) -> dict[str, tuple[datetime, float]]:
    """run id -> (start time, monotonic time it was created)."""
    out: dict[str, tuple[datetime, float]] = {}
    sem = asyncio.Semaphore(conc)

    async def one(start):
        async with sem:
            async with http.post(f"{api}/flow_runs", json={"flow_id": flow_id, "labels": [label], "scheduled_start_time": start.isoformat()}) as r:
                body = await r.json()
                out[body["id"]] = (start, time.time())

    await asyncio.gather(*(one(s) for s in starts))
    return out


async def agent_loop(http, url, agent_id, label, pending: set[str], seen: dict[str, float], stats: dict, idle: float, claim_conc: int, stop: asyncio.Event):
    sem = asyncio.Semaphore(claim_conc)
    submitting: set[str] = set()  # as the 1.4.1 agent's submitting_flow_runs: never two claims of one run

    async def claim(run_id):
        async with sem:
            sent = time.monotonic()
            body = await gql(http, url, CLAIM, {"input": {"states": [{"flow_run_id": run_id, "version": 1, "state": {"type": "Submitted", "message": "bench agent"}}]}}, agent_id)
            stats["claim_s"].append(time.monotonic() - sent)
            if body.get("errors"):
                stats["lost"] += 1
            else:
                stats["claimed"] += 1
                pending.discard(run_id)
        submitting.discard(run_id)

    tasks: set[asyncio.Task] = set()
    while not stop.is_set() and pending:
        asked = time.monotonic()
        body = await gql(http, url, POLL, {"input": {"labels": [label], "before": datetime.now(timezone.utc).isoformat()}}, agent_id)
        stats["poll_s"].append(time.monotonic() - asked)
        now = time.time()
        stats["polls"] += 1
        ids = (body.get("data") or {}).get("get_runs_in_queue", {}).get("flow_run_ids") or []
        for run_id in ids:
            seen.setdefault(run_id, now)
            if run_id in submitting or run_id not in pending:
                continue
            submitting.add(run_id)
            t = asyncio.create_task(claim(run_id))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if not ids:
            await asyncio.sleep(idle)
        elif len(tasks) >= claim_conc:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def scenario(http, url, flow_id, agents, runs, window, lead, idle, claim_conc, timeout) -> dict:
    api = f"{url}/api/v1"
    label = f"bench-{uuid.uuid4().hex[:6]}"
    ids = [(await gql(http, url, REGISTER, {"input": {"type": "BenchAgent", "name": f"a{i}-{label}", "labels": [label]}}))["data"]["register_agent"]["id"] for i in range(agents)]
    t0 = datetime.now(timezone.utc) + timedelta(seconds=lead)
    starts = [t0 + timedelta(seconds=window * i / max(runs, 1)) for i in range(runs)]
    created_at = time.monotonic()
    created = await create_runs(http, api, flow_id, label, starts)
    create_seconds = time.monotonic() - created_at
    pending, seen = set(created), {}
    stats = {"polls": 0, "claimed": 0, "lost": 0, "poll_s": [], "claim_s": []}
    stop = asyncio.Event()
    started = time.monotonic()
    loops = [asyncio.create_task(agent_loop(http, url, a, label, pending, seen, stats, idle, claim_conc, stop)) for a in ids]
    try:
        await asyncio.wait_for(asyncio.gather(*loops), timeout)
    except asyncio.TimeoutError:
        stop.set()
        await asyncio.gather(*loops, return_exceptions=True)
    wall = time.monotonic() - started
    delays = [seen[r] - s.timestamp() for r, (s, made) in created.items() if r in seen and made < s.timestamp()]
    return {
        "runs": runs, "create_seconds": round(create_seconds, 1), "measured": len(delays), "seen": len(seen),
        "p50": pct(delays, 50), "p99": pct(delays, 99), "max": max(delays) if delays else float("nan"),
        "claimed": stats["claimed"], "lost_races": stats["lost"], "polls": stats["polls"], "wall": wall,
        "claims_per_s": stats["claimed"] / wall if wall else 0.0,
        "poll_p50": pct(stats["poll_s"], 50), "poll_p99": pct(stats["poll_s"], 99),
        "claim_p50": pct(stats["claim_s"], 50), "claim_p99": pct(stats["claim_s"], 99),
    }


async def run(args) -> None:
    stack = None
    url = args.url
    if url is None:
        from runledger.services.devstack import Stack

        env = {"RUNLEDGER_LOG_LEVEL": "WARNING", "RUNLEDGER_SCHEDULING_RECOVERY_ENABLED": "false"}
        stack = Stack(own_redis=True, partitions=args.partitions, extra_env=env)
        await asyncio.to_thread(stack.start)
        stack.start_service("scheduling")
        await asyncio.to_thread(stack.wait_ready, "scheduling")
        url = stack.api_url
        print(f"stack: {stack.workdir}")
    try:
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
            api = f"{url}/api/v1"
            async with http.post(f"{api}/projects", json={"name": f"bench-{uuid.uuid4().hex[:6]}"}) as r:
                project = await r.json()
            async with http.post(f"{api}/flows", json={"name": "bench-sched", "project_id": project["id"]}) as r:
                flow = await r.json()
            print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}")
            print(f"settings: runs={args.runs} window={args.window}s lead={args.lead}s agents={args.agents} idle={args.idle}s claim-runs={args.claim_runs} claim-conc={args.claim_conc}")
            q = await scenario(http, url, flow["id"], args.agents, args.runs, args.window, args.lead, args.idle, args.claim_conc, args.window + args.lead + 120)
            print(f"1. queue delay: {q['measured']} of {q['runs']} runs measured (created in {q['create_seconds']} s), "
                  f"start -> first poll answer p50 {q['p50']*1000:.0f} ms, p99 {q['p99']*1000:.0f} ms, max {q['max']*1000:.0f} ms; "
                  f"{q['claimed']} claimed, {q['lost_races']} lost races, {q['polls']} polls "
                  f"(poll answer p50 {q['poll_p50']*1000:.0f} ms, p99 {q['poll_p99']*1000:.0f} ms; "
                  f"claim answer p50 {q['claim_p50']*1000:.0f} ms, p99 {q['claim_p99']*1000:.0f} ms)")
            cpu_before = cpu_seconds(stack, CPU_PROCESSES) if stack is not None else None
            c = await scenario(http, url, flow["id"], args.agents, args.claim_runs, 0.0, 0.0, args.idle, args.claim_conc, 300)
            cpu_after = cpu_seconds(stack, CPU_PROCESSES) if stack is not None else None
            print(f"2. claims: {c['claimed']} of {c['runs']} due runs claimed by {args.agents} agents in {c['wall']:.1f} s = "
                  f"{c['claims_per_s']:.0f} claims/s ({c['lost_races']} lost races, {c['polls']} polls; "
                  f"claim answer p50 {c['claim_p50']*1000:.0f} ms, p99 {c['claim_p99']*1000:.0f} ms)")
            if cpu_before is not None:  # creating the runs is in it too: one create per claimed run
                per = {n: (cpu_after[n] - cpu_before[n]) * 1000 / max(c["claimed"], 1) for n in CPU_PROCESSES}
                print("   CPU ms per run (create + polls + claim): " + ", ".join(f"{n} {ms:.1f}" for n, ms in per.items()))
            print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        if stack is not None:
            await asyncio.to_thread(stack.stop)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a running stack (with a scheduling service); default: own stack")
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--lead", type=float, default=45.0, help="seconds between now and the first start time (creation happens meanwhile)")
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--idle", type=float, default=0.25, help="an empty poll waits this long (the 1.4.1 agent's first backoff)")
    p.add_argument("--claim-runs", type=int, default=4000)
    p.add_argument("--claim-conc", type=int, default=8)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="1,000 runs over 15 s, 1,000 claims")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.window, args.lead, args.claim_runs = 1000, 15.0, 10.0, 1000
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
