"""Concurrency limits and agents as aggregates of the single writer (pure): the decisions, the
ledger's envelopes and remembered verdicts, snapshots (restore + tail), and the projection into
the Redis hashes the scheduling store and gate read."""

from __future__ import annotations

import copy

import orjson
import pytest

from runledger.domain import snapshots
from runledger.domain.agents import AGENTS_AGGREGATE, Agents
from runledger.domain.decisions import Accepted, Rejected
from runledger.domain.ledger import Ledger
from runledger.domain.limits import LIMITS_AGGREGATE, ConcurrencyLimits, limit_id_for
from runledger.domain.scheduling import agent_id_for
from runledger.messages import commands as c
from runledger.messages import events as e
from runledger.messages.codec import decode_event, encode
from runledger.readmodel.keys import Keys
from runledger.readmodel.projection import Changes, Projection
from tests.unit.factories import T0, at, envelope, ledger_with_run

K = Keys("rl", 8)


def step(agg, command, when=T0):
    """handle + apply, as the writer does; handle never changes the aggregate."""
    before = copy.deepcopy(agg)
    decision = agg.handle(command, when)
    assert agg == before, "handle must not change the aggregate"
    if isinstance(decision, Accepted):
        for event in decision.events:
            agg.apply(event)
    return decision


# -- limits: the decisions ----------------------------------------------------------------------------
def test_a_limit_gets_an_id_stable_for_its_label_and_an_update_keeps_it():
    limits = ConcurrencyLimits()
    first = step(limits, c.SetConcurrencyLimit(kind="label", name="gpu", limit=2))
    lid = limit_id_for("label", "gpu")
    assert first.events == [e.ConcurrencyLimitSet(limit_id=lid, kind="label", name="gpu", limit=2)]
    assert first.outcome["limit_id"] == lid and first.outcome["changed"]
    update = step(limits, c.SetConcurrencyLimit(kind="label", name="gpu", limit=5))
    assert update.events == [e.ConcurrencyLimitSet(limit_id=lid, kind="label", name="gpu", limit=5)]
    assert limits.by_name("label", "gpu").limit == 5 and list(limits.limits) == [lid]


def test_setting_the_same_value_changes_nothing_but_records_its_verdict():
    limits = ConcurrencyLimits()
    step(limits, c.SetConcurrencyLimit(kind="tag", name="db", limit=1))
    again = step(limits, c.SetConcurrencyLimit(kind="tag", name="db", limit=1))
    assert again.events == [] and again.record_verdict and again.outcome["changed"] is False


def test_labels_and_tags_of_the_same_name_are_different_limits():
    limits = ConcurrencyLimits()
    step(limits, c.SetConcurrencyLimit(kind="label", name="x", limit=1))
    step(limits, c.SetConcurrencyLimit(kind="tag", name="x", limit=3))
    assert limit_id_for("label", "x") != limit_id_for("tag", "x")
    assert (limits.by_name("label", "x").limit, limits.by_name("tag", "x").limit) == (1, 3)


def test_delete_by_id_then_set_again_gives_the_same_id():
    limits = ConcurrencyLimits()
    step(limits, c.SetConcurrencyLimit(kind="tag", name="db", limit=1))
    lid = limit_id_for("tag", "db")
    deleted = step(limits, c.DeleteConcurrencyLimit(limit_id=lid))
    assert deleted.events == [e.ConcurrencyLimitDeleted(limit_id=lid, kind="tag", name="db")]
    assert limits.by_name("tag", "db") is None
    gone = step(limits, c.DeleteConcurrencyLimit(limit_id=lid))
    assert isinstance(gone, Rejected) and gone.rejection.code == "NOT_FOUND" and gone.rejection.field == "limit_id"
    assert step(limits, c.SetConcurrencyLimit(kind="tag", name="db", limit=4)).outcome["limit_id"] == lid


def test_the_commands_refuse_what_is_not_a_limit():
    with pytest.raises(ValueError):
        c.SetConcurrencyLimit(kind="label", name="", limit=1)
    with pytest.raises(ValueError):
        c.SetConcurrencyLimit(kind="label", name="a", limit=-1)
    with pytest.raises(ValueError):
        c.SetConcurrencyLimit(kind="queue", name="a", limit=1)


# -- agents: the decisions ------------------------------------------------------------------------------
def register(**fields) -> c.RegisterAgent:
    return c.RegisterAgent(**{"agent_type": "LocalAgent", "name": "agent", "labels": ["b", "a"], **fields})


def test_the_same_type_name_and_sorted_labels_give_the_same_agent():
    agents = Agents()
    first = step(agents, register(), at(1))
    agent_id = agent_id_for("LocalAgent", "agent", ["a", "b"])
    assert first.outcome == {"agent_id": agent_id, "created": True}
    (event,) = first.events
    assert (event.agent_id, event.labels, event.created) == (agent_id, ["a", "b"], at(1))
    again = step(agents, register(labels=["a", "b", "a"]), at(2))
    assert again.events == [] and again.outcome == {"agent_id": agent_id, "created": False}
    other = step(agents, register(labels=["a"]), at(3))
    assert other.outcome["agent_id"] != agent_id and len(agents.agents) == 2


def test_registering_again_with_a_new_version_updates_it_and_keeps_created():
    agents = Agents()
    step(agents, register(core_version="1.4.0"), at(1))
    upgraded = step(agents, register(core_version="1.4.1"), at(9))
    (event,) = upgraded.events
    assert (event.core_version, event.created) == ("1.4.1", at(1)) and upgraded.outcome["created"] is False


# -- the ledger --------------------------------------------------------------------------------------------
def test_the_ledger_routes_limits_and_agents_to_their_aggregates_without_a_flow_run():
    ledger = Ledger()
    answer = ledger.decide(envelope(LIMITS_AGGREGATE, c.SetConcurrencyLimit(kind="label", name="gpu", limit=1), "set-1"), T0)
    (env,) = answer.events
    assert (env.aggregate_id, env.flow_run_id, env.seq, env.outcome["limit_id"]) == (LIMITS_AGGREGATE, None, 1, limit_id_for("label", "gpu"))
    agent = ledger.decide(envelope(AGENTS_AGGREGATE, register(), "reg-1"), T0)
    assert agent.events[0].flow_run_id is None and agent.events[0].aggregate_id == AGENTS_AGGREGATE
    assert isinstance(ledger.aggregates[LIMITS_AGGREGATE], ConcurrencyLimits)
    assert isinstance(ledger.aggregates[AGENTS_AGGREGATE], Agents)
    # events survive the codec (what the log holds)
    assert decode_event(encode(env)) == env and decode_event(encode(agent.events[0])) == agent.events[0]


def test_a_redelivered_set_after_a_later_change_is_answered_from_memory():
    ledger = Ledger()
    ledger.decide(envelope(LIMITS_AGGREGATE, c.SetConcurrencyLimit(kind="label", name="gpu", limit=2), "a"), at(0))
    noop = ledger.decide(envelope(LIMITS_AGGREGATE, c.SetConcurrencyLimit(kind="label", name="gpu", limit=2), "b"), at(1))
    assert [ev.type for ev in noop.events] == ["VerdictRecorded"]
    ledger.decide(envelope(LIMITS_AGGREGATE, c.SetConcurrencyLimit(kind="label", name="gpu", limit=7), "c"), at(2))
    for command_id, limit in (("a", 2), ("b", 2)):
        redelivered = ledger.decide(envelope(LIMITS_AGGREGATE, c.SetConcurrencyLimit(kind="label", name="gpu", limit=limit), command_id), at(3))
        assert redelivered.duplicate and redelivered.events == []
    assert ledger.aggregates[LIMITS_AGGREGATE].by_name("label", "gpu").limit == 7


def test_an_unknown_limit_id_is_refused_and_recorded_once_limits_exist():
    ledger = Ledger()
    first = ledger.decide(envelope(LIMITS_AGGREGATE, c.DeleteConcurrencyLimit(limit_id="nope"), "d0"), T0)
    assert first.rejection.code == "NOT_FOUND" and first.events == []  # no aggregate yet: no trace
    ledger.decide(envelope(LIMITS_AGGREGATE, c.SetConcurrencyLimit(kind="tag", name="t", limit=1), "s"), T0)
    second = ledger.decide(envelope(LIMITS_AGGREGATE, c.DeleteConcurrencyLimit(limit_id="nope"), "d1"), T0)
    assert second.rejection.code == "NOT_FOUND" and [ev.type for ev in second.events] == ["VerdictRecorded"]


# -- snapshots ------------------------------------------------------------------------------------------------
def _history() -> list:
    return [
        envelope(LIMITS_AGGREGATE, c.SetConcurrencyLimit(kind="label", name="gpu", limit=2), "l1"),
        envelope(AGENTS_AGGREGATE, register(core_version="1.4.0"), "a1"),
        envelope(LIMITS_AGGREGATE, c.SetConcurrencyLimit(kind="tag", name="db", limit=1), "l2"),
        envelope(LIMITS_AGGREGATE, c.SetConcurrencyLimit(kind="label", name="gpu", limit=2), "l3"),  # no-op
        envelope(AGENTS_AGGREGATE, register(name="other", labels=[]), "a2"),
        envelope(LIMITS_AGGREGATE, c.DeleteConcurrencyLimit(limit_id=limit_id_for("tag", "db")), "l4"),
        envelope(AGENTS_AGGREGATE, register(core_version="1.4.1"), "a3"),
        envelope(LIMITS_AGGREGATE, c.SetConcurrencyLimit(kind="label", name="eu", limit=0), "l5"),
    ]


@pytest.mark.parametrize("cut", range(len(_history()) + 1))
def test_limits_and_agents_survive_a_restart_from_snapshot_and_tail(cut):
    history = _history()
    live, log = ledger_with_run(), []
    for i, command in enumerate(history[:cut]):
        log += live.decide(command, at(i)).events
    position = len(log)
    raw = snapshots.encode(live, position)
    for i, command in enumerate(history[cut:], start=cut):
        log += live.decide(command, at(i)).events

    restored, at_position = snapshots.decode(raw)
    assert at_position == position
    assert all(restored.replay(env) for env in log[position:])
    assert dict(restored.aggregates.items()) == live.aggregates
    assert restored.verdicts() == live.verdicts()
    # later commands are decided alike; redeliveries are answered from memory
    later = [
        *history,
        envelope(LIMITS_AGGREGATE, c.SetConcurrencyLimit(kind="label", name="gpu", limit=3), "later-1"),
        envelope(LIMITS_AGGREGATE, c.DeleteConcurrencyLimit(limit_id=limit_id_for("label", "eu")), "later-2"),
        envelope(AGENTS_AGGREGATE, register(labels=["z"]), "later-3"),
    ]
    for i, command in enumerate(later, start=100):
        a, b = live.decide(command, at(i)), restored.decide(command, at(i))
        assert (a.outcome, a.rejection, a.duplicate) == (b.outcome, b.rejection, b.duplicate), command.command_id
        assert [x.model_dump(exclude={"event_id"}) for x in a.events] == [x.model_dump(exclude={"event_id"}) for x in b.events]


def test_a_snapshot_with_an_unreadable_limits_aggregate_is_refused():
    ledger = Ledger()
    ledger.decide(envelope(LIMITS_AGGREGATE, c.SetConcurrencyLimit(kind="label", name="gpu", limit=2)), T0)
    captured = snapshots.capture(ledger, 1)
    broken = [(k, v.replace(b'"limit":2', b'"limit":"two"')) for k, v in captured.aggregates]
    assert broken != captured.aggregates
    raw = snapshots.Captured(1, broken, captured.verdicts).to_bytes()  # a valid frame, a bad aggregate
    with pytest.raises(snapshots.SnapshotError, match="concurrency-limits"):
        snapshots.decode(raw)


# -- the projection -----------------------------------------------------------------------------------------
def _log() -> list:
    ledger, log = Ledger(), []
    for i, command in enumerate(_history()):
        log += ledger.decide(command, at(i)).events
    return log


def project(log):
    projection, docs, changes = Projection(K), {}, Changes()
    applied = [projection.apply(env, docs, changes) for env in log]
    return docs, changes, applied


def test_limits_and_agents_are_projected_into_the_hashes_the_store_reads():
    log = _log()
    docs, changes, applied = project(log)
    assert all(applied)
    hashes = {key: value for key, value in changes.hashes.items()}
    gpu = orjson.loads(hashes[(K.limits("label"), "gpu")])
    assert gpu == {"id": limit_id_for("label", "gpu"), "name": "gpu", "limit": 2, "kind": "label", "updated_ms": int(at(0).timestamp() * 1000)}
    assert orjson.loads(hashes[(K.limits("label"), "eu")])["limit"] == 0
    assert hashes[(K.limits("tag"), "db")] is None and hashes[(K.limit_ids, limit_id_for("tag", "db"))] is None  # deleted
    assert hashes[(K.limit_ids, limit_id_for("label", "gpu"))] == "label\x1fgpu"
    agent_id = agent_id_for("LocalAgent", "agent", ["a", "b"])
    agent = orjson.loads(hashes[(K.agents, agent_id)])
    assert (agent["type"], agent["labels"], agent["core_version"], agent["created"]) == ("LocalAgent", ["a", "b"], "1.4.1", at(1).isoformat())
    assert docs[K.aggregate(LIMITS_AGGREGATE)]["seq"] == sum(1 for env in log if env.aggregate_id == LIMITS_AGGREGATE)


def test_their_keys_are_in_their_aggregates_partition_slot_and_duplicates_are_skipped():
    log = _log()
    for env in log:
        tag = "{p%d}" % K.partition(env.aggregate_id)
        assert all(tag in key for key in Projection(K).keys_needed(env))
    assert "{p%d}" % K.partition(LIMITS_AGGREGATE) in K.limits("label") and "{p%d}" % K.partition(LIMITS_AGGREGATE) in K.limit_ids
    assert "{p%d}" % K.partition(AGENTS_AGGREGATE) in K.agents and "{p%d}" % K.partition(AGENTS_AGGREGATE) in K.agent_seen
    assert not K.agent_seen.startswith(K.rm)  # liveness: not a read model, a rebuild keeps it
    clean = project(log)
    noisy = project([log[0], log[0], *log[1:], log[2], log[-1]])
    assert noisy[0] == clean[0] and noisy[1].hashes == clean[1].hashes
    assert noisy[2] == [True, False] + [True] * (len(log) - 1) + [False, False]
