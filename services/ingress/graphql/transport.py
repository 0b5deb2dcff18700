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
from graphql import DocumentNode, GraphQLError, GraphQLSchema, parse, validate

from runledger.lru import LRU
from runledger.services.ingress.graphql.errors import format_error
from runledger.services.ingress.graphql.limits import DocumentLimits, depends_on_variables, limits_rule
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


class CheckedDocuments:
    """Parse and validate a document, remembering the verdict by its text (a bounded LRU).

    Clients send the same few documents over and over (an agent polls with one document, claims
    with another), and graphql-core's parse + validation was over a third of the ingress's CPU
    under agent polls. Validation depends only on the document and the schema, so its verdict is
    reused. The limits verdict is reused too unless a ``limit`` argument takes a variable (then it
    is checked on every request with its variables); on a first sight the limits are checked
    before the full validation, which has quadratic rules, so an abusive document is refused by
    the linear limits pass first."""

    def __init__(self, schema: GraphQLSchema, limits: DocumentLimits, size: int = 512, max_cached_chars: int = 32_768) -> None:
        self.schema, self.limits, self.size, self.max_cached_chars = schema, limits, size, max_cached_chars
        # text -> (document, validation errors, limits errors when they cannot depend on variables)
        self._cache: LRU[str, tuple[DocumentNode, list[dict], list[dict] | None]] = LRU(size)

    def check(self, query: str, variables: dict | None) -> tuple[DocumentNode | None, list[dict]]:
        """The parsed document, or the errors that refuse it (limits, parse or validation)."""
        cached = self._cache.get(query)
        if cached is None:
            try:
                document = parse(query, max_tokens=self.limits.max_tokens)
            except GraphQLError as exc:
                if "tokens. Parsing aborted" in exc.message:
                    maximum = self.limits.max_tokens
                    message = f"the document has more than {maximum} tokens (RUNLEDGER_GRAPHQL_MAX_TOKENS)"
                    return None, [{"message": message, "extensions": {"code": "QUERY_LIMIT_EXCEEDED", "limit": "max_tokens", "maximum": maximum}}]
                return None, [{**exc.formatted, "extensions": {"code": "GRAPHQL_PARSE_FAILED"}}]
        else:
            document = cached[0]
        refused = cached[2] if cached is not None and cached[2] is not None else self._over_limits(document, variables)
        if refused:
            return None, refused
        if cached is None:
            fixed_limits = None if depends_on_variables(document) else refused
            cached = (document, [e.formatted for e in validate(self.schema, document)], fixed_limits)
            if len(query) <= self.max_cached_chars:
                self._cache.put(query, cached)
        return (None, cached[1]) if cached[1] else (document, [])

    def _over_limits(self, document: DocumentNode, variables: dict | None) -> list[dict]:
        return [e.formatted for e in validate(self.schema, document, rules=[limits_rule(self.limits, variables)])]


def _validated_already(*_args, **_kwargs) -> list:
    """ariadne's validation step for a document ``CheckedDocuments`` has validated."""
    return []


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
    documents = CheckedDocuments(schema, limits)

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
        check = (asyncio.to_thread if len(data["query"]) > 4096 else _call)(documents.check, data["query"], variables)
        document, refused = await check
        if refused:
            return JSONResponse(_with_codes({"errors": refused}), status_code=400)
        context = {"request": request}
        success, result = await graphql(schema, data, context_value=context, query_document=document, query_validator=_validated_already,
                                        error_formatter=format_error)
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
