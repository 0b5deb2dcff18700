"""Issue 9, item 4: an idempotent repeat that asks for other parameters or context than the run its
key names is refused with an error naming the key (the Prefect client's docstring promises it);
an identical repeat still returns the run. Over GraphQL with the real client, and over REST (422).

The comparison is ``runledger.domain.idempotency.check_repeat``, called by ``Application.create_flow_run``.
"""

from __future__ import annotations

import json

from tests.conftest import register
from tests.prefect.conftest import unique


def test_the_client_is_refused_a_repeat_with_other_parameters(prefect, api, project):
    flow = register(api, project, name=unique("repeat"), parameters=[{"name": "who", "default": "world"}])
    result = prefect.python(
        f"""
        import json
        from prefect import Client
        from prefect.exceptions import ClientError
        c = Client()
        first = c.create_flow_run(flow_id="{flow['id']}", idempotency_key="nightly-1", parameters={{"who": "marvin"}})
        same = c.create_flow_run(flow_id="{flow['id']}", idempotency_key="nightly-1", parameters={{"who": "marvin"}})
        try:
            c.create_flow_run(flow_id="{flow['id']}", idempotency_key="nightly-1", parameters={{"who": "arthur"}})
            refused = None
        except ClientError as exc:
            refused = str(exc)
        print(json.dumps([first == same, refused]))
        """
    ).check()
    same, refused = json.loads(result.stdout.strip().splitlines()[-1])
    assert same and refused and "idempotency key 'nightly-1'" in refused and "parameters" in refused


def test_rest_answers_422_for_a_repeat_with_other_parameters_or_context(api, project):
    flow = register(api, project, name=unique("repeat"), parameters=[{"name": "who", "default": "world"}])
    body = {"flow_id": flow["id"], "idempotency_key": "K", "parameters": {"who": "marvin"}, "context": {"a": 1}}
    first = api.post("/flow_runs", json=body)
    assert first.status_code == 201, first.text
    again = api.post("/flow_runs", json=body)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"] and again.json()["deduplicated"]
    for change in ({"parameters": {"who": "arthur"}}, {"context": {"a": 2}}):
        refused = api.post("/flow_runs", json={**body, **change})
        assert refused.status_code == 422, refused.text
        assert "idempotency key 'K'" in refused.text and next(iter(change)) in refused.text
    assert api.post("/flow_runs", json={**body, "parameters": {}}).status_code == 422  # the defaults differ too
