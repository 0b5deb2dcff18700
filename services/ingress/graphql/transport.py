"""The HTTP side of GraphQL: the GraphiQL explorer on ``GET /graphql``, execution on ``POST /graphql``
and on ``POST /`` (where the Prefect 1.x client sends everything: its server endpoint's root).

Prefect 1.x clients rely on: ``variables`` arriving as a JSON-encoded string; field errors answered
with HTTP 200 and ``errors[]``. Request errors (malformed body, a document that does not parse or
validate, or one over the document limits) are answered with 400. Every error carries
``extensions.code``.
"""

from __future__ import annotations

import asyncio

import orjson
from ariadne import graphql
from ariadne.explorer import ExplorerGraphiQL
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from graphql import GraphQLError, GraphQLSchema, parse, validate

from runledger.services.ingress.graphql.limits import DocumentLimits, limits_rule
from runledger.services.ingress.responses import JSONResponse

_explorer = ExplorerGraphiQL(title="RunLedger GraphQL").html(None)


def _request_error(message: str, code: str = "BAD_REQUEST") -> JSONResponse:
    return JSONResponse({"errors": [{"message": message, "extensions": {"code": code}}]}, status_code=400)


def _with_codes(result: dict) -> dict:
    """Give every error a code: the client shows one without a code as UNKNOWN_ERROR."""
    for error in result.get("errors") or []:
        extensions = error.setdefault("extensions", {})
        if "code" not in extensions:
            if error.get("path"):
                extensions["code"] = "INTERNAL_SERVER_ERROR"
            elif str(error.get("message", "")).startswith("Syntax Error"):
                extensions["code"] = "GRAPHQL_PARSE_FAILED"
            else:
                extensions["code"] = "GRAPHQL_VALIDATION_FAILED"
    return result


def over_limits(schema: GraphQLSchema, query: str, variables: dict | None, limits: DocumentLimits) -> list[dict]:
    """Errors for a document over the limits, found before the full validation runs: graphql-core's
    validation has quadratic rules (overlapping fields), so an abusive document must be refused by
    this linear pass, or it would hold the event loop and every other request with it."""
    try:
        document = parse(query, max_tokens=limits.max_tokens)
    except GraphQLError as exc:
        if "tokens. Parsing aborted" in exc.message:
            message = f"the document has more than {limits.max_tokens} tokens (RUNLEDGER_GRAPHQL_MAX_TOKENS)"
            return [{"message": message, "extensions": {"code": "QUERY_LIMIT_EXCEEDED", "limit": "max_tokens", "maximum": limits.max_tokens}}]
        return [{**exc.formatted, "extensions": {"code": "GRAPHQL_PARSE_FAILED"}}]
    return [e.formatted for e in validate(schema, document, rules=[limits_rule(limits, variables)])]


async def _call(function, *args):
    return function(*args)


GRAPHQL_ERROR = {
    "type": "object",
    "required": ["message", "extensions"],
    "properties": {
        "message": {"type": "string"},
        "path": {"type": "array"},
        "locations": {"type": "array"},
        "extensions": {"type": "object", "required": ["code"], "properties": {"code": {"type": "string"}}},
    },
}
OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["query"],
                    "properties": {
                        "query": {"type": "string", "description": "A GraphQL document (its schema: the GraphiQL explorer at GET /graphql)"},
                        "variables": {
                            "oneOf": [
                                {"type": "object"},
                                {"type": "null"},
                                {"type": "string", "contentMediaType": "application/json", "description": "A JSON-encoded object (as Prefect 1.x sends them)"},
                            ]
                        },
                        "operationName": {"type": ["string", "null"]},
                    },
                },
                "example": {"query": "{ hello }"},
            }
        },
    },
    "responses": {
        "200": {
            "description": "Executed: `data`, and `errors` for fields that failed (each with `extensions.code`)",
            "content": {"application/json": {"schema": {"type": "object", "properties": {"data": {}, "errors": {"type": "array", "items": GRAPHQL_ERROR}, "extensions": {"type": "object"}}}}},
        },
        "400": {
            "description": "Not executed: a malformed body, or a document that does not parse, validate, or fit the document limits, or variables that do not fit their types",
            "content": {"application/json": {"schema": {"type": "object", "required": ["errors"], "properties": {"errors": {"type": "array", "items": GRAPHQL_ERROR}}}}},
        },
        "413": {
            "description": "Request body over the size limit",
            "content": {"application/json": {"schema": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "array"}}}}},
        },
    },
}


def mount(app: FastAPI, schema: GraphQLSchema, limits: DocumentLimits) -> None:
    @app.get("/graphql", tags=["graphql"], summary="GraphiQL explorer", response_class=HTMLResponse)
    async def explorer() -> HTMLResponse:
        return HTMLResponse(_explorer)

    async def execute(request: Request) -> JSONResponse:
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return _request_error(f"body: malformed JSON ({exc})")
        if not isinstance(data, dict) or not isinstance(data.get("query"), str):
            return _request_error("body: expected an object with a 'query' string")
        if isinstance(data.get("variables"), str):  # Prefect 1.x sends json.dumps(variables)
            try:
                data["variables"] = orjson.loads(data["variables"]) if data["variables"] else None
            except orjson.JSONDecodeError as exc:
                return _request_error(f"variables: malformed JSON ({exc})")
        if not isinstance(data.get("variables"), (dict, type(None))):
            return _request_error("variables: expected an object")
        if not isinstance(data.get("operationName"), (str, type(None))):
            return _request_error("operationName: expected a string")
        variables = data.get("variables")
        # A long document is checked on a worker thread, so the event loop keeps serving others.
        check = (asyncio.to_thread if len(data["query"]) > 4096 else _call)(over_limits, schema, data["query"], variables, limits)
        if refused := await check:
            return JSONResponse({"errors": refused}, status_code=400)
        context = {"request": request}
        success, result = await graphql(schema, data, context_value=context)
        if context.get("extensions"):  # what resolvers report about the read (e.g. a bounded scan)
            result.setdefault("extensions", {}).update(context["extensions"])
        return JSONResponse(_with_codes(result), status_code=200 if success or field_errors_only(result) else 400)

    app.add_api_route("/graphql", execute, methods=["POST"], tags=["graphql"], summary="GraphQL", openapi_extra=OPENAPI)
    app.add_api_route("/", execute, methods=["POST"], tags=["graphql"], summary="GraphQL (the Prefect 1.x client's endpoint)", openapi_extra=OPENAPI)


def field_errors_only(result: dict) -> bool:
    """Errors raised while resolving fields carry a ``path`` and are answered with 200, as Prefect's
    client requires (it only reads ``errors`` on a 2xx). Request errors (a document that does not
    parse or validate, variables that do not fit their types) have no path and are answered with
    400, like ariadne's own handler does."""
    errors = result.get("errors") or []
    return "data" in result and all(error.get("path") for error in errors)
