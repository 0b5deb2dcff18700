"""Live watch over Server-Sent Events: history first (from Scheduled), then live states and lines,
``Last-Event-ID`` resume without gap or repeat, the end after the finished state and its last
lines, one Redis subscription per watched run however many watchers, and lines and states stored
in record-time order whichever topic they came by."""

from __future__ import annotations

import threading
import time

import httpx

from tests.integration.test_logs import lapi, logs_stack, new_run, wait_for  # noqa: F401  (fixtures)


def read_events(stack, run_id: str, *, last_event_id: str | None = None, stop_after: int | None = None, timeout: float = 30.0, on_event=None) -> list[dict]:
    """Read the SSE stream until it ends (or ``stop_after`` events); events as dicts."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events, current = [], {}
    with httpx.stream("GET", f"{stack.api_url}/api/v1/flow_runs/{run_id}/watch", headers=headers, timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if not line:
                if current:
                    events.append(current)
                    if on_event:
                        on_event(current)
                    current = {}
                    if stop_after is not None and len(events) >= stop_after:
                        break
                continue
            name, _, value = line.partition(": ")
            current[name] = value
    return events


def post_logs(lapi, run_id, *messages):
    r = lapi.post("/logs", json={"logs": [{"flow_run_id": run_id, "message": m} for m in messages]})
    assert r.status_code == 200, r.text


def set_state(lapi, run_id, state, message=None):
    r = lapi.post(f"/flow_runs/{run_id}/state", json={"state": {"type": state, "message": message}, "version": None})
    assert r.status_code == 200, r.text


def summary(events):
    import json

    out = []
    for e in events:
        data = json.loads(e["data"])
        out.append((e["event"], data.get("type") or data.get("message") or data.get("version")))
    return out


def test_history_then_live_then_end_after_the_last_lines(logs_stack, lapi):
    rid = new_run(lapi)["id"]
    post_logs(lapi, rid, "before-1", "before-2")
    time.sleep(0.3)
    received, live = [], []
    started = threading.Event()

    def on_event(event):
        live.append(event)
        started.set()

    def watcher():
        received.extend(read_events(logs_stack, rid, on_event=on_event))

    thread = threading.Thread(target=watcher)
    thread.start()
    assert started.wait(10)
    set_state(lapi, rid, "Running")  # acknowledged before the line is sent: stored before it
    post_logs(lapi, rid, "live-1")
    set_state(lapi, rid, "Success", "All reference tasks succeeded.")
    post_logs(lapi, rid, "after-success")  # sent right after the final state: still shown (grace)
    thread.join(30)
    assert not thread.is_alive(), "the stream did not end after the finished state"
    assert summary(received) == [
        ("state", "Scheduled"),
        ("log", "before-1"),
        ("log", "before-2"),
        ("state", "Running"),
        ("log", "live-1"),
        ("state", "Success"),
        ("log", "after-success"),
        ("end", 3),
    ]
    ids = [e["id"] for e in received]
    assert len(set(ids)) == len(ids) and all(ids)
    # A new watcher of a finished run gets the whole history and the end, then the stream closes.
    assert summary(read_events(logs_stack, rid)) == summary(received)


def test_a_reconnect_after_the_end_gets_an_ended_stream(logs_stack, lapi):
    """An EventSource reconnects by itself after the server closes: with the end's id it gets
    nothing and an ended stream (it used to get keep-alives for ever)."""
    rid = new_run(lapi)["id"]
    set_state(lapi, rid, "Success", "done")
    events = read_events(logs_stack, rid)
    assert events[-1]["event"] == "end"
    assert read_events(logs_stack, rid, last_event_id=events[-1]["id"], timeout=10) == []


def test_last_event_id_resumes_without_gap_or_repeat(logs_stack, lapi):
    rid = new_run(lapi)["id"]
    post_logs(lapi, rid, *[f"a{i}" for i in range(5)])
    time.sleep(0.3)
    first = read_events(logs_stack, rid, stop_after=3)  # Scheduled, a0, a1: then the client drops
    post_logs(lapi, rid, *[f"b{i}" for i in range(3)])  # while it is away
    set_state(lapi, rid, "Running")
    time.sleep(0.3)
    rest = []
    thread = threading.Thread(target=lambda: rest.extend(read_events(logs_stack, rid, last_event_id=first[-1]["id"])))
    thread.start()
    time.sleep(0.5)
    post_logs(lapi, rid, "c0")
    set_state(lapi, rid, "Failed", "boom")
    thread.join(30)
    assert not thread.is_alive()
    everything = summary(first) + summary(rest)
    assert everything == [
        ("state", "Scheduled"), ("log", "a0"), ("log", "a1"), ("log", "a2"), ("log", "a3"), ("log", "a4"),
        ("log", "b0"), ("log", "b1"), ("log", "b2"), ("state", "Running"), ("log", "c0"), ("state", "Failed"), ("end", 3),
    ]
    assert summary(read_events(logs_stack, rid)) == everything


def test_many_watchers_share_one_subscription(logs_stack, lapi):
    import redis

    rid = new_run(lapi)["id"]
    client = redis.Redis.from_url(logs_stack.redis_url)
    blocked_before = int(client.info("clients")["blocked_clients"])
    results: list[list] = [[] for _ in range(8)]
    connected = threading.Semaphore(0)

    def watch(i: int) -> None:
        first = threading.Event()

        def seen(_event) -> None:
            if not first.is_set():
                first.set()
                connected.release()

        results[i].extend(read_events(logs_stack, rid, on_event=seen))

    threads = [threading.Thread(target=watch, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for _ in threads:  # every watcher has its history: all eight are subscribed now
        assert connected.acquire(timeout=30)
    samples = []  # the shared blocking read is re-issued between reads: sample, and take the most seen
    for _ in range(40):
        samples.append(int(client.info("clients")["blocked_clients"]) - blocked_before)
        time.sleep(0.05)
    blocked = max(samples)
    post_logs(lapi, rid, "hello all")
    set_state(lapi, rid, "Running")
    set_state(lapi, rid, "Success")
    for t in threads:
        t.join(30)
    assert blocked == 1, f"{blocked} blocking reads for 8 watchers of one run"
    expected = [("state", "Scheduled"), ("log", "hello all"), ("state", "Running"), ("state", "Success"), ("end", 3)]
    assert all(summary(r) == expected for r in results)


def test_watch_of_an_unknown_run_is_404(logs_stack):
    r = httpx.get(f"{logs_stack.api_url}/api/v1/flow_runs/00000000-0000-0000-0000-000000000000/watch")
    assert r.status_code == 404


def test_lines_and_states_are_stored_in_record_time_order_whatever_topic_they_came_by():
    """States (``events``) and lines (``logs``) already in the topics when the log service starts:
    its timeline interleaves them by record time, a state first on a tie. Storage in arrival order
    (a consumer per topic, or topic after topic) puts both states together and both lines together."""
    import asyncio
    import uuid
    from datetime import datetime, timezone

    import redis

    from runledger.messages.events import EventEnvelope
    from runledger.messages.logs import LogChunk
    from runledger.services.devstack import Stack
    from runledger.services.runtime import kafka
    from runledger.services.runtime.logstore import LogStore, entry_view
    from runledger.topics import LOGS, topics_for

    run = str(uuid.uuid4())
    base_ms = int(time.time() * 1000) - 60_000

    def state_event(seq: int, state: str) -> bytes:
        at = datetime.fromtimestamp(base_ms / 1000, timezone.utc)
        event = EventEnvelope.model_validate({
            "event_id": uuid.uuid4(), "type": "FlowRunStateSet", "aggregate_id": run, "flow_run_id": run, "seq": seq,
            "time": at, "causation_id": str(uuid.uuid4()),
            "payload": {"type": "FlowRunStateSet", "state": {"type": state, "timestamp": at}, "version": seq},
        })
        return event.model_dump_json().encode()

    def line(message: str) -> bytes:
        return LogChunk(flow_run_id=run, lines=[{"message": message, "level": "INFO", "timestamp": "2026-01-01T00:00:00Z"}]).encode()

    stack = Stack(own_redis=True, partitions=2)
    try:
        stack.start(services=())  # the broker and Redis: the log service starts once the records are in
        settings = stack.settings()
        topics = topics_for(settings)

        async def produce() -> None:
            producer = kafka.producer(settings)
            await producer.start()
            try:  # each topic in time order; keyed by the run, so both land on the same partition number
                for topic, value, at in [(topics.events.name, state_event(2, "Submitted"), base_ms),
                                         (topics.events.name, state_event(3, "Running"), base_ms + 2),
                                         (topics[LOGS].name, line("first"), base_ms + 1),
                                         (topics[LOGS].name, line("second"), base_ms + 2)]:
                    await producer.send_and_wait(topic, value, key=run.encode(), timestamp_ms=at)
            finally:
                await producer.stop()

        asyncio.run(produce())
        stack.start_service("logs")
        stack.wait_ready("logs")
        client = redis.Redis.from_url(stack.redis_url)
        key = LogStore(client).timeline_key(run)
        wait_for(lambda: client.xlen(key) == 4)
        timeline = [entry_view(entry_id.decode(), fields) for entry_id, fields in client.xrange(key)]
        assert [(kind, data.get("type") or data.get("message")) for kind, data in timeline] == [
            ("state", "Submitted"), ("log", "first"), ("state", "Running"), ("log", "second"),
        ]
    finally:
        stack.stop()


def test_a_run_whose_logs_expired_is_watched_to_its_final_state():
    """Past its retention a finished run's timeline is gone; its watch sends the read model's
    final state and the end (it used to wait for events that would never come)."""
    from runledger.services.devstack import Stack
    from tests.integration.test_logs import SERVICES

    stack = Stack(own_redis=True, partitions=1, extra_env={"RUNLEDGER_LOGS_RETENTION_DAYS": "0.00003",  # 2.6 s
                                                            "RUNLEDGER_LOGS_WATCH_END_GRACE_SECONDS": "0.3"})
    try:
        stack.start(services=SERVICES)
        with httpx.Client(base_url=stack.api_url + "/api/v1", timeout=30) as api:
            rid = new_run(api)["id"]
            set_state(api, rid, "Success", "done")
            redis = stack.redis_client()
            assert wait_for(lambda: redis.keys(f"*logs:{{{rid}}}:tl"))  # stored ...
            assert wait_for(lambda: not redis.keys(f"*logs:{{{rid}}}:*"))  # ... and expired
            version = api.get(f"/flow_runs/{rid}").json()["version"]
            events = read_events(stack, rid, timeout=10)
            assert summary(events) == [("state", "Success"), ("end", version)]
            assert read_events(stack, rid, last_event_id=events[-1]["id"], timeout=10) == []  # a reconnect after the end ends
    finally:
        stack.stop()


def test_sigterm_stops_the_ingress_within_seconds_even_with_a_watch_open():
    """uvicorn waits for every open response on SIGTERM, without a limit: a watch of a run that
    never ends held the ingress until its pod was killed. It now gets 5 s."""
    import signal
    import subprocess

    from runledger.services.devstack import Stack
    from tests.integration.test_logs import SERVICES

    stack = Stack(own_redis=True, partitions=1)
    try:
        stack.start(services=SERVICES)
        with httpx.Client(base_url=stack.api_url + "/api/v1", timeout=30) as api:
            rid = new_run(api)["id"]
        opened = threading.Event()
        watcher = threading.Thread(target=lambda: _watch_until_dropped(stack, rid, opened), daemon=True)
        watcher.start()
        assert opened.wait(20)
        ingress = stack.processes["ingress"]
        started = time.monotonic()
        ingress.send_signal(signal.SIGTERM)
        try:
            ingress.wait(timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError("the ingress did not stop within 20 s of SIGTERM with a watch open") from None
        assert time.monotonic() - started < 15
    finally:
        stack.stop()


def _watch_until_dropped(stack, run_id, opened: threading.Event) -> None:
    try:
        read_events(stack, run_id, timeout=60, on_event=lambda e: opened.set())
    except httpx.HTTPError:
        pass
