"""The HTTP side of ``/graphql``: the GraphiQL explorer on GET, execution on POST.

Prefect 1.x clients rely on: ``variables`` arriving as a JSON-encoded string; field errors answered
with HTTP 200 and ``errors[]``. Request errors (malformed body, a document that does not parse or
validate) are answered with 400.
"""

from __future__ import annotations

import orjson
from ariadne import graphql
from ariadne.explorer import ExplorerGraphiQL
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, ORJSONResponse
from graphql import GraphQLSchema

_explorer = ExplorerGraphiQL(title="RunLedger GraphQL").html(None)


def mount(app: FastAPI, schema: GraphQLSchema) -> None:
    @app.get("/graphql", include_in_schema=False)
    async def explorer() -> HTMLResponse:
        return HTMLResponse(_explorer)

    @app.post("/graphql", tags=["graphql"])
    async def execute(request: Request) -> ORJSONResponse:
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return ORJSONResponse({"errors": [{"message": f"body: malformed JSON ({exc})"}]}, status_code=400)
        if not isinstance(data, dict) or not isinstance(data.get("query"), str):
            return ORJSONResponse({"errors": [{"message": "body: expected an object with a 'query' string"}]}, status_code=400)
        if isinstance(data.get("variables"), str):  # Prefect 1.x sends json.dumps(variables)
            try:
                data["variables"] = orjson.loads(data["variables"]) if data["variables"] else None
            except orjson.JSONDecodeError as exc:
                return ORJSONResponse({"errors": [{"message": f"variables: malformed JSON ({exc})"}]}, status_code=400)
        success, result = await graphql(schema, data, context_value={"request": request})
        return ORJSONResponse(result, status_code=200 if success or field_errors_only(result) else 400)


def field_errors_only(result: dict) -> bool:
    """Errors raised while resolving fields carry a ``path`` and are answered with 200, as Prefect's
    client requires (it only reads ``errors`` on a 2xx). Request errors (a document that does not
    parse or validate, variables that do not fit their types) have no path and are answered with
    400, like ariadne's own handler does."""
    errors = result.get("errors") or []
    return "data" in result and all(error.get("path") for error in errors)
