"""The query planner: which index answers the Hasura filters the Prefect 1.x client sends
(reference section 2.1), what stays to check in memory, and when it must scan."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from runledger.readmodel.filters import matches
from runledger.readmodel.planner import conjuncts, due_plan, plan

T = "2026-01-01T00:00:00+00:00"
MS = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp() * 1000


def test_ids_come_first():
    p = plan("flow_run", {"id": {"_eq": "r1"}})  # R6, R14, R16
    assert (p.kind, p.ids, p.residual) == ("ids", ("r1",), None)
    # R15: ids with an _or beside them; the _or stays to check
    where = {"id": {"_in": ["a", "b"]}, "_or": [{"state": {"_eq": "Scheduled"}}, {"state": {"_eq": "Running"}}]}
    p = plan("flow_run", where)
    assert (p.kind, p.ids) == ("ids", ("a", "b")) and p.residual == {"_and": [{"_or": where["_or"]}]}
    assert plan("task_run", {"id": {"_eq": "t"}}).kind == "ids"


@pytest.mark.parametrize(
    "where,index,values",
    [
        ({"flow_id": {"_eq": "f"}}, "fr:flow", ("f",)),
        ({"flow_group_id": {"_eq": "g"}}, "fr:group", ("g",)),
        ({"version_group_id": {"_eq": "g"}}, "fr:group", ("g",)),
        ({"labels": {"_contains": ["gpu", "eu"]}}, "fr:label", ("gpu",)),
        ({"labels": {"_has_key": "gpu"}}, "fr:label", ("gpu",)),
        ({"project_id": {"_eq": "p"}}, "fr:project", ("p",)),
        ({"project": {"id": {"_eq": "p"}}}, "fr:project", ("p",)),
        ({"state": {"_eq": "Scheduled"}}, "fr:state", ("Scheduled",)),
        ({"state": {"_in": ["Scheduled", "Paused", "Scheduled"]}}, "fr:state", ("Scheduled", "Paused")),
        # the more selective index wins, wherever it is in the where
        ({"state": {"_eq": "Running"}, "_and": [{"flow_id": {"_eq": "f"}}, {}]}, "fr:flow", ("f",)),
        ({"_and": {"labels": {"_contains": ["x"]}, "state": {"_eq": "Running"}}}, "fr:label", ("x",)),
    ],
)
def test_flow_run_equality_indexes(where, index, values):
    p = plan("flow_run", where)
    assert (p.kind, p.index, p.values) == ("index", index, values)


def test_the_consumed_condition_leaves_the_residual_and_a_partial_one_stays():
    p = plan("flow_run", {"state": {"_eq": "Scheduled"}, "name": {"_eq": "x"}})
    assert p.residual == {"_and": [{"name": {"_eq": "x"}}]}
    p = plan("flow_run", {"labels": {"_contains": ["a", "b"]}})
    assert p.residual == {"_and": [{"labels": {"_contains": ["a", "b"]}}]}  # b is checked in memory
    p = plan("flow_run", {"state": {"_eq": "Scheduled", "_neq": "x"}})
    assert p.index == "fr:state" and p.residual is not None


def test_oldest_scheduled_run_is_an_ordered_walk_of_the_state_index():
    p = plan("flow_run", {"state": {"_eq": "Scheduled"}}, {"scheduled_start_time": "asc"})
    assert (p.index, p.values, p.ordered, p.descending, p.kind) == ("fr:state", ("Scheduled",), True, False, "index")
    assert p.residual is None


def test_a_start_time_range_bounds_the_walk():
    where = {"_and": [{"state": {"_eq": "Scheduled"}}, {"scheduled_start_time": {"_lte": T}}]}
    p = plan("flow_run", where, [{"scheduled_start_time": "asc"}])
    assert (p.index, p.score_min, p.score_max, p.ordered) == ("fr:state", None, MS, True)
    # without an equality index the range picks the all-runs index ordered by that field
    p = plan("flow_run", {"scheduled_start_time": {"_gte": T, "_lt": T}})
    assert (p.kind, p.index, p.score_min, p.score_max) == ("index", "fr:sst", MS, MS)
    # the range stays in the residual (bounds are inclusive in the walk, _lt is exclusive)
    assert p.residual == {"_and": [{"scheduled_start_time": {"_gte": T, "_lt": T}}]}
    p = plan("flow_run", {"created": {"_gt": T}}, {"created": "desc"})
    assert (p.index, p.score_min, p.ordered, p.descending) == ("fr:created", MS, True, True)


def test_order_by_another_field_is_a_sorted_read():
    p = plan("flow_run", {"flow_id": {"_eq": "f"}}, {"created": "desc"})
    assert p.index == "fr:flow" and not p.ordered
    p = plan("flow_run", {"flow_id": {"_eq": "f"}})
    assert p.ordered and p.descending  # no order: newest first


def test_only_unindexable_filters_scan():
    p = plan("flow_run", {"name": {"_eq": "x"}})
    assert (p.kind, p.index, p.reason) == ("scan", "fr:created", "no index fits the filter")
    p = plan("flow_run", {"_or": [{"flow_id": {"_eq": "a"}}, {"flow_id": {"_eq": "b"}}]})
    assert p.kind == "scan"  # an _or is not an AND of indexable parts
    p = plan("flow_run", {"name": {"_eq": "x"}}, {"scheduled_start_time": "desc"})
    assert (p.kind, p.index, p.ordered) == ("scan", "fr:sst", True)
    p = plan("flow_run", None, {"created": "desc"})
    assert (p.kind, p.index, p.ordered) == ("index", "fr:created", True)
    assert plan("flow_run", {}).kind == "index"


def test_task_run_filters_the_client_sends():
    p = plan("task_run", {"flow_run_id": {"_eq": "r"}})  # R10
    assert (p.index, p.values, p.residual) == ("tr:flow_run", ("r",), None)
    # R9: slug + flow run + map index
    where = {"task": {"slug": {"_eq": "s"}}, "flow_run_id": {"_eq": "r"}, "map_index": {"_eq": -1}}
    p = plan("task_run", where, {"map_index": "asc"})
    assert p.index == "tr:flow_run" and not p.ordered and len(p.residual["_and"]) == 2
    # R17
    where = {"state_start_time": {"_is_null": False}, "flow_run_id": {"_eq": "r"}, "flow_run": {"state": {"_eq": "Running"}}}
    assert plan("task_run", where).index == "tr:flow_run"
    # R18: cached states of a task
    where = {"state": {"_eq": "Cached"}, "state_timestamp": {"_gte": T}, "task_id": {"_eq": "t"}}
    p = plan("task_run", where, {"state_timestamp": "desc"})
    assert (p.index, p.values, p.ordered) == ("tr:state", ("Cached",), False)
    assert plan("task_run", {"name": {"_eq": "x"}}).kind == "scan"


def test_the_residual_filter_keeps_the_meaning_of_the_where():
    docs = [{"id": str(i), "state": s, "name": n, "flow_id": f} for i, (s, n, f) in enumerate(
        [("Scheduled", "a", "f"), ("Running", "a", "f"), ("Scheduled", "b", "g"), ("Scheduled", "a", "g")]
    )]
    wheres = [
        {"state": {"_eq": "Scheduled"}, "name": {"_eq": "a"}},
        {"_and": [{"flow_id": {"_eq": "g"}}, {}, {"_or": [{"name": {"_eq": "a"}}, {"state": {"_eq": "Running"}}]}]},
        {"state": {"_in": ["Running", "Scheduled"]}, "_not": {"flow_id": {"_eq": "f"}}},
    ]
    for where in wheres:
        p = plan("flow_run", where)
        field_name = {"fr:state": "state", "fr:flow": "flow_id"}[p.index]
        via_index = [d for d in docs if d[field_name] in p.values and matches(d, p.residual)]
        assert via_index == [d for d in docs if matches(d, where)], where


def test_conjuncts_flatten_and():
    assert conjuncts({"_and": [{"a": 1}, {}, {"_and": {"b": 2}}], "c": 3}) == [("a", 1), ("b", 2), ("c", 3)]


def test_due_plan():
    p = due_plan(before=MS)
    assert (p.index, p.score_max, p.ordered, p.descending) == ("fr:due", MS, True, False)


def test_bad_order_by_is_refused():
    with pytest.raises(ValueError):
        plan("flow_run", None, ["created"])
