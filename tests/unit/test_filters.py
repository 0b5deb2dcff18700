"""Hasura-style where/order_by evaluation used by the GraphQL reads."""

from __future__ import annotations

import pytest

from runledger.readmodel.filters import matches, order

RUNS = [
    {"id": "a", "state": "Running", "version": 3, "timestamp": "2030-01-01T00:00:10+00:00", "project": {"name": "p"}},
    {"id": "b", "state": "Scheduled", "version": 1, "timestamp": "2030-01-01T00:00:05+00:00", "project": {"name": "q"}},
    {"id": "c", "state": "Success", "version": 5, "timestamp": None, "project": None},
]


def ids(where):
    return [r["id"] for r in RUNS if matches(r, where, lambda doc, name: doc.get(name))]


@pytest.mark.parametrize(
    "where, expected",
    [
        ({}, ["a", "b", "c"]),
        ({"id": {"_eq": "a"}}, ["a"]),
        ({"id": {"_neq": "a"}}, ["b", "c"]),
        ({"id": {"_in": ["a", "c"]}}, ["a", "c"]),
        ({"id": {"_nin": ["a", "c"]}}, ["b"]),
        ({"version": {"_gt": 1, "_lte": 5}}, ["a", "c"]),
        ({"version": {"_gte": 3}, "state": {"_eq": "Running"}}, ["a"]),
        ({"timestamp": {"_lte": "2030-01-01T00:00:07Z"}}, ["b"]),
        ({"timestamp": {"_is_null": True}}, ["c"]),
        ({"_and": [{"version": {"_gt": 0}}, {}]}, ["a", "b", "c"]),
        ({"_and": {"version": {"_lt": 4}, "state": {"_eq": "Scheduled"}}}, ["b"]),
        ({"_or": [{"id": {"_eq": "a"}}, {"state": {"_eq": "Success"}}]}, ["a", "c"]),
        ({"_not": {"id": {"_eq": "a"}}}, ["b", "c"]),
        ({"project": {"name": {"_eq": "q"}}}, ["b"]),
    ],
)
def test_where(where, expected):
    assert ids(where) == expected


def test_unknown_operator_is_an_error():
    with pytest.raises(ValueError):
        matches(RUNS[0], {"id": {"_like": "a%"}})


def test_order_by():
    assert [r["id"] for r in order(RUNS, {"version": "desc"})] == ["c", "a", "b"]
    assert [r["id"] for r in order(RUNS, {"timestamp": "asc"})] == ["b", "a", "c"]  # nulls last
    assert [r["id"] for r in order(RUNS, None)] == ["a", "b", "c"]


def test_a_naive_time_in_a_filter_is_utc_as_everywhere_else_in_the_api():
    doc = {"timestamp": "2024-01-01T10:00:00+00:00"}
    assert matches(doc, {"timestamp": {"_gt": "2024-01-01T09:59:59"}})
    assert not matches(doc, {"timestamp": {"_gt": "2024-01-01T10:00:00"}})


def test_ordering_values_of_different_kinds_never_fails_and_a_bad_clause_is_named():
    docs = [{"v": "b"}, {"v": "2024-01-01T00:00:00Z"}, {"v": 2}, {"v": 1.5}, {"v": None}, {"v": "a"}]
    assert [d["v"] for d in order(docs, {"v": "asc"})] == [1.5, 2, "2024-01-01T00:00:00Z", "a", "b", None]
    with pytest.raises(ValueError, match="expected objects like"):
        order(docs, "name")


def test_neq_and_nin_never_match_a_null_field_as_in_sql():
    assert not matches({"end_time": None}, {"end_time": {"_neq": "2024-01-01T00:00:00Z"}})
    assert not matches({"state": None}, {"state": {"_nin": ["Running"]}})
    assert matches({"state": "Success"}, {"state": {"_nin": ["Running"]}})
    assert matches({"end_time": None}, {"end_time": {"_is_null": True}})
