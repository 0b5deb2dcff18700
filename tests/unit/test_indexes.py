"""Secondary indexes kept by the projection: entries follow the documents, removals included,
whatever way the log is cut into batches; every key of a batch is in its partition's slot."""

from __future__ import annotations

import random
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from runledger.domain.ledger import Ledger
from runledger.domain.states import State
from runledger.messages import commands as c
from runledger.readmodel import indexes
from runledger.readmodel.keys import Keys
from runledger.readmodel.projection import Changes, Projection
from tests.unit.factories import T0, at, envelope, set_state, set_task_state, spec

K = Keys("rl", partitions=4)


class FakeRedis:
    """Sorted sets as dicts, written the way the projector writes a batch's Changes."""

    def __init__(self) -> None:
        self.docs: dict[str, dict] = {}
        self.zsets: dict[str, dict[str, float]] = {}

    def write(self, changes: Changes) -> None:
        self.docs.update(changes.docs)
        for key, score, member in changes.zadd:
            self.zsets.setdefault(key, {})[member] = score
        for key, member in changes.zrem:
            self.zsets.get(key, {}).pop(member, None)
        self.zsets = {k: v for k, v in self.zsets.items() if v}  # Redis drops empty sets


def expected_indexes(docs: dict[str, dict]) -> dict[str, dict[str, float]]:
    """The indexes computed from scratch from the final documents."""
    out: dict[str, dict[str, float]] = {}
    for key, doc in docs.items():
        entity = "flow_run" if ":flow_run:" in key else "task_run" if ":task_run:" in key else None
        if entity is None:
            continue
        partition = int(re.search(r"\{p(\d+)\}", key).group(1))
        for (name, value), score in indexes.entries(entity, doc).items():
            out.setdefault(K.index(partition, name, value), {})[doc["id"]] = score
    return out


def run_log(seed: int, runs: int = 3, steps: int = 12) -> list:
    rng = random.Random(seed)
    ledger, log = Ledger(), []
    for r in range(runs):
        s = spec(f"run-{r}", tasks=2).model_copy(update={"labels": rng.sample(["a", "b", "c"], rng.randrange(0, 3))})
        log += ledger.decide(envelope(f"run-{r}", c.CreateFlowRun(spec=s)), at(r)).events
    for i in range(steps):
        r = rng.randrange(runs)
        if rng.random() < 0.3:
            payload = set_task_state(f"run-{r}-tr{rng.randrange(2)}", rng.choice(["Running", "Success", "Failed", "Pending"]))
        else:
            state = rng.choice(["Scheduled", "Running", "Success", "Failed", "Paused", "Queued", "Retrying", "Submitted"])
            payload = set_state(state, start_time=at(1000 + i) if state in ("Scheduled", "Retrying") and rng.random() < 0.5 else None)
        log += ledger.decide(envelope(f"run-{r}", payload), at(10 + i)).events
    return log


def project_in_batches(log, cuts: list[int]) -> FakeRedis:
    projection, redis = Projection(K), FakeRedis()
    bounds = [0, *sorted(set(cuts)), len(log)]
    for start, end in zip(bounds, bounds[1:]):
        by_partition: dict[int, list] = {}
        for env in log[start:end]:
            by_partition.setdefault(projection.partition(env), []).append(env)
        for envs in by_partition.values():  # the projector applies each partition's batch alone
            docs = {k: redis.docs.get(k) for env in envs for k in projection.keys_needed(env)}
            changes = Changes()
            for env in envs:
                projection.apply(env, docs, changes)
            redis.write(changes)
    return redis


def test_a_run_moves_between_state_indexes():
    ledger, log = Ledger(), []
    log += ledger.decide(envelope("run-1", c.CreateFlowRun(spec=spec("run-1", tasks=1))), at(0)).events
    p = K.partition("run-1")
    redis = FakeRedis()
    projection = Projection(K)

    def apply(events):
        docs = {k: redis.docs.get(k) for env in events for k in projection.keys_needed(env)}
        changes = Changes()
        for env in events:
            projection.apply(env, docs, changes)
        redis.write(changes)
        return changes

    apply(log)
    assert redis.zsets[K.index(p, "fr:state", "Scheduled")] == {"run-1": T0.timestamp() * 1000}
    assert redis.zsets[K.index(p, "fr:due")] == {"run-1": T0.timestamp() * 1000}
    assert redis.zsets[K.index(p, "tr:state", "Pending")] == {"run-1-tr0": at(0).timestamp() * 1000}
    changes = apply(ledger.decide(envelope("run-1", set_state("Running")), at(5)).events)
    assert (K.index(p, "fr:state", "Scheduled"), "run-1") in changes.zrem and (K.index(p, "fr:due"), "run-1") in changes.zrem
    assert K.index(p, "fr:state", "Scheduled") not in redis.zsets and K.index(p, "fr:due") not in redis.zsets
    assert redis.zsets[K.index(p, "fr:state", "Running")] == {"run-1": T0.timestamp() * 1000}
    # back to Scheduled with a start time: due at that time; unchanged indexes are not rewritten
    changes = apply(ledger.decide(envelope("run-1", set_state("Scheduled", start_time=at(60))), at(6)).events)
    assert redis.zsets[K.index(p, "fr:due")] == {"run-1": at(60).timestamp() * 1000}
    assert not any(key == K.index(p, "fr:flow", "flow-1") for key, _, _ in changes.zadd)
    apply(ledger.decide(envelope("run-1", set_task_state("run-1-tr0", "Success")), at(7)).events)
    assert redis.zsets[K.index(p, "tr:state", "Success")] == {"run-1-tr0": at(0).timestamp() * 1000}
    assert K.index(p, "tr:state", "Pending") not in redis.zsets
    assert redis.zsets == expected_indexes(redis.docs)


def test_net_effect_of_a_batch_is_order_independent():
    changes = Changes()
    changes.z_add("z", 1.0, "m")
    changes.z_rem("z", "m")
    changes.z_add("z", 2.0, "m")
    changes.z_rem("y", "m")
    assert changes.zadd == [("z", 2.0, "m")] and changes.zrem == [("y", "m")]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(0, 60), max_size=8))
def test_indexes_equal_a_fresh_computation_however_the_log_is_batched(seed, cuts):
    log = run_log(seed)
    whole = project_in_batches(log, [])
    batched = project_in_batches(log, [c for c in cuts if c < len(log)])
    assert batched.docs == whole.docs and batched.zsets == whole.zsets
    assert whole.zsets == expected_indexes(whole.docs)


def test_every_key_of_a_batch_is_in_its_partition_slot():
    log = run_log(3, runs=6, steps=30)
    projection = Projection(K)
    for env in log:
        docs = {k: None for k in projection.keys_needed(env)}
        changes = Changes()
        if env.seq != 1:
            continue  # only the creations apply to an empty model; enough to see every key kind
        projection.apply(env, docs, changes)
        tag = "{p%d}" % projection.partition(env)
        touched = [*changes.docs, *(k for k, _, _ in changes.zadd), *(k for k, _ in changes.zrem)]
        assert touched and all(tag in key for key in touched), touched


def test_registry_keys_are_in_the_registry_partition():
    tag = "{p%d}" % K.registry_partition
    for key in (K.project("x"), K.projects, K.project_by_name, K.flow("f"), K.flows, K.flows_by_name("n"), K.flow_group("g"), K.registry):
        assert tag in key
    assert K.registry_partition == K.partition("registry")
    for p in range(K.partitions):
        assert f"{{p{p}}}" in K.checkpoint(p) and f"{{p{p}}}" in K.rebuild_fence(p)


def test_due_score_prefers_the_state_start_time():
    doc = {"scheduled_start_time": T0.isoformat(), "state": {"type": "Retrying", "start_time": at(30).isoformat()}}
    assert indexes.due_score(doc) == at(30).timestamp() * 1000
    assert indexes.due_score({**doc, "state": {"type": "Queued", "start_time": None}}) == T0.timestamp() * 1000
    assert indexes.due_score({**doc, "state": {"type": "Running"}}) is None
    assert State(type="Paused").type.value in indexes.SCHEDULED_STATES


def test_a_time_without_a_zone_scores_as_utc_whatever_the_host_zone(monkeypatch):
    import time

    from runledger.readmodel import indexes

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    indexes._ms.cache_clear()
    try:
        assert indexes.score_of("2024-01-01T12:00:00") == indexes.score_of("2024-01-01T12:00:00Z") == 1704110400000.0
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
        indexes._ms.cache_clear()
