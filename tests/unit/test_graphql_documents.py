"""``CheckedDocuments``: a document's validation verdict is reused, its limits are not (they
depend on the request's variables)."""

from __future__ import annotations

from runledger.services.ingress.graphql import schema
from runledger.services.ingress.graphql.limits import DocumentLimits
from runledger.services.ingress.graphql.transport import CheckedDocuments

RUNS = "query($n: Int) { flow_run(limit: $n) { id } }"


def test_a_valid_document_is_parsed_once_and_reused():
    documents = CheckedDocuments(schema, DocumentLimits())
    first, errors = documents.check(RUNS, {"n": 5})
    again, errors_again = documents.check(RUNS, {"n": 7})
    assert errors == errors_again == []
    assert first is not None and again is first


def test_limits_are_checked_with_each_requests_variables_even_when_cached():
    documents = CheckedDocuments(schema, DocumentLimits(max_limit=10))
    assert documents.check(RUNS, {"n": 5})[1] == []
    document, errors = documents.check(RUNS, {"n": 11})
    assert document is None
    assert errors[0]["extensions"]["limit"] == "max_limit", errors


def test_an_invalid_document_keeps_being_refused_with_the_same_error():
    documents = CheckedDocuments(schema, DocumentLimits())
    for _ in range(2):
        document, errors = documents.check("{ flow_run { no_such_field } }", None)
        assert document is None
        assert "no_such_field" in errors[0]["message"]


def test_a_parse_error_and_a_token_limit_are_named():
    documents = CheckedDocuments(schema, DocumentLimits(max_tokens=20))
    assert documents.check("{ flow_run { id ", None)[1][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
    long = "{ " + " ".join(f"a{i}: hello" for i in range(20)) + " }"
    assert documents.check(long, None)[1][0]["extensions"]["limit"] == "max_tokens"


def test_the_cache_is_bounded():
    documents = CheckedDocuments(schema, DocumentLimits(), size=3)
    for i in range(10):
        documents.check(f"{{ a{i}: hello }}", None)
    assert len(documents._cache) == 3


def test_the_limits_verdict_is_reused_only_when_no_limit_takes_a_variable():
    documents = CheckedDocuments(schema, DocumentLimits())
    fixed = 'query($id: String) { flow_run(where: {id: {_eq: $id}}, limit: 3) { id } }'
    documents.check(fixed, {"id": "x"})
    documents.check(RUNS, {"n": 1})
    assert documents._cache.get(fixed)[2] == []  # cannot change with the variables
    assert documents._cache.get(RUNS)[2] is None  # checked again on every request


def test_json_size_names_the_field_of_a_value_json_cannot_hold():
    import pytest
    from graphql import GraphQLError

    from runledger.services.ingress.graphql.coercion import json_size

    assert json_size({"a": [1, 2]}, "data") == len(b'{"a":[1,2]}')
    with pytest.raises(GraphQLError) as refused:
        json_size({"n": 2**70}, "serialized_flow")
    assert refused.value.extensions["code"] == "BAD_USER_INPUT"
    assert refused.value.message.startswith("serialized_flow: cannot be stored as JSON")
