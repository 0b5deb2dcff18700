"""schemathesis (4.32) names each operation's test ``test_operations[GET /graphql]`` but, under
pytest 9's structured node ids, gives them all one node id (``test_openapi.py::test_operations``:
it still sets the pre-9 ``_nodeid``). pytest-xdist's file scheduler tracks tests by node id and
would run only the first of them, so each gets its name as its id (the root conftest refuses
duplicate ids, should this stop working)."""

from __future__ import annotations


def pytest_collection_modifyitems(items):
    for item in items:
        if type(item).__name__ == "SchemathesisFunction" and item.nodeid != f"{item.parent.nodeid}::{item.name}":
            item._id = item.parent.id.child(item.name)
