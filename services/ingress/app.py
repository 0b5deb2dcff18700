"""The HTTP ingress (run creation and every other command), as a FastAPI app."""

from __future__ import annotations

import re
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from runledger.services.ingress.responses import JSONResponse

from runledger.services.ingress.application import Application, CommandRejected
from runledger.services.ingress.errors import OUTAGES, RETRY_AFTER_SECONDS, documented, http_status, outage_message
from runledger.services.runtime.bus import CommandBus, CommandTimeout
from runledger.services.ingress.rest import router
from runledger.services.ingress.rest_logs import router as logs_router
from runledger.services.runtime import redis as redis_clients
from runledger.services.ingress.rest_scheduling import install as install_scheduling
from runledger.services.runtime.stores import IdempotencyStore, ReadModels
from runledger.domain.run_requests import RequestError
from runledger.services.runtime.logs import configure
from runledger.readmodel.keys import Keys
from runledger.settings import Settings


class BodyLimit:
    """Refuse request bodies over the configured size before reading them whole. Paths that carry
    log batches (REST ``/api/v1/logs``, GraphQL's ``write_run_logs``) take the log-batch limit."""

    def __init__(self, app, limit: int, by_path: dict[str, int] | None = None) -> None:
        self.app, self.default, self.by_path = app, limit, by_path or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.by_path.get(scope["path"], self.default)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._refuse(send, int(declared), limit)
        # No (or an untrusted) Content-Length: read up to the limit before the app sees anything.
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > limit:
                return await self._refuse(send, seen, limit)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send, size: int, limit: int) -> None:
        response = JSONResponse(
            {"detail": [{"loc": ["body"], "msg": f"request body of {size} bytes is over the limit of {limit} bytes", "type": "too_large"}]},
            status_code=413,
        )
        await response({"type": "http"}, None, send)


class AllowedMethods:
    """405 with an ``Allow`` header naming exactly the methods the OpenAPI document lists for the
    resource the URL is. A URL that fits several path templates is the most specific one (literal
    segments before parameters: ``/flow_runs/states`` is not ``/flow_runs/{flow_run_id}``), and
    every method of that path counts (Starlette's own 405 names only the first route's). URLs that
    fit no documented path (``/docs``, unknown ones) go to the router as they are."""

    def __init__(self, app, openapi) -> None:
        self.app, self._openapi, self._templates = app, openapi, None

    def templates(self) -> list[tuple[tuple[int, ...], re.Pattern, frozenset[str]]]:
        if self._templates is None:
            templates = []
            for path, item in self._openapi()["paths"].items():
                methods = {m.upper() for m in item if m.upper() in HTTP_METHODS}
                if "GET" in methods:
                    methods.add("HEAD")
                parts = path.split("/")
                regex = re.compile("/".join(r"[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$")
                templates.append((tuple(int(p.startswith("{")) for p in parts), regex, frozenset(methods)))
            self._templates = templates
        return self._templates

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            fits = [(rank, methods) for rank, regex, methods in self.templates() if regex.match(scope["path"])]
            if fits:
                methods = min(fits, key=lambda fit: fit[0])[1]
                if scope["method"] not in methods:
                    allow = ", ".join(sorted(methods))
                    response = JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": allow})
                    return await response(scope, receive, send)
        await self.app(scope, receive, send)


HTTP_METHODS = {"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"}


# OpenAPI links: what a created resource's answer feeds into (Schemathesis follows them in its
# stateful tests: create project -> register flow -> create run -> set state / read / cancel ...).
# (method, path, status) -> {link name: {"target": (method, path), OpenAPI link fields (parameters, requestBody)}}
_FLOW_RUN = {
    "GetFlowRun": ("GET", "/api/v1/flow_runs/{flow_run_id}"),
    "SetFlowRunState": ("POST", "/api/v1/flow_runs/{flow_run_id}/state"),
    "CancelFlowRun": ("POST", "/api/v1/flow_runs/{flow_run_id}/cancel"),
    "RenameFlowRun": ("POST", "/api/v1/flow_runs/{flow_run_id}/name"),
    "FlowRunHeartbeat": ("POST", "/api/v1/flow_runs/{flow_run_id}/heartbeat"),
    "FlowRunTaskRuns": ("GET", "/api/v1/flow_runs/{flow_run_id}/task_runs"),
    "FlowRunLogs": ("GET", "/api/v1/flow_runs/{flow_run_id}/logs"),
}
LINKS: dict[tuple[str, str, str], dict[str, dict]] = {
    ("POST", "/api/v1/projects", "201"): {
        "RegisterFlow": {"target": ("POST", "/api/v1/flows"), "requestBody": {"project_id": "$response.body#/id"}},
    },
    ("POST", "/api/v1/flows", "201"): {
        "GetFlow": {"target": ("GET", "/api/v1/flows/{flow_id}"), "parameters": {"path.flow_id": "$response.body#/id"}},
        "FlowRunsOfFlow": {"target": ("GET", "/api/v1/flows/{flow_id}/flow_runs"), "parameters": {"path.flow_id": "$response.body#/id"}},
        "UpdateFlowGroup": {"target": ("PATCH", "/api/v1/flow_groups/{flow_group_id}"), "parameters": {"path.flow_group_id": "$response.body#/version_group_id"}},
        # The whole body: a generated one may name the flow another way too (exactly one is allowed).
        "CreateFlowRun": {"target": ("POST", "/api/v1/flow_runs"), "requestBody": {"flow_id": "$response.body#/id"}, "x-schemathesis": {"merge_body": False}},
    },
    **{
        ("POST", "/api/v1/flow_runs", status): {
            name: {"target": target, "parameters": {"path.flow_run_id": "$response.body#/id"}} for name, target in _FLOW_RUN.items()
        }
        for status in ("200", "201")
    },
}


def add_links(schema: dict) -> dict:
    operation_ids = {
        (method.upper(), path): operation["operationId"]
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "operationId" in operation
    }
    for (method, path, status), links in LINKS.items():
        response = schema["paths"][path][method.lower()]["responses"].setdefault(status, {"description": "Successful Response"})
        response["links"] = {
            name: {"operationId": operation_ids[link["target"]], **{k: v for k, v in link.items() if k != "target"}}
            for name, link in links.items()
        }
    return schema


def unavailable(detail: str, **extra) -> JSONResponse:
    return JSONResponse({**extra, "detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    log = configure("ingress", settings.log_level, settings.log_json)
    keys = Keys(settings.redis_prefix, settings.partitions)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        redis = redis_clients.client(settings, max_connections=256)
        bus = CommandBus(settings, redis, keys)
        await bus.start()
        app.state.bus = bus
        app.state.application = Application(settings, bus, ReadModels(redis, keys, settings.read_scan_limit), IdempotencyStore(redis, keys, settings.idempotency_ttl_seconds))
        log.info("ingress ready", reply_partition=bus.reply_partition)
        yield
        await bus.stop()
        await redis.aclose()

    app = FastAPI(
        title="RunLedger",
        version="0.1.0",
        description="Event-sourced flow-run orchestration backend (Prefect 1.x flow-run feature set).",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    from runledger.services.ingress.graphql import mount_graphql
    from runledger.services.ingress.graphql.limits import DocumentLimits

    # Routes are matched in this order, and a request pays for every one it passes: POST /, the
    # Prefect client's endpoint for everything, took 125 µs to route behind the REST routers and
    # 8 µs in front of them, while the REST routes pay only a few µs for GraphQL's three.
    mount_graphql(
        app,
        DocumentLimits(
            max_depth=settings.graphql_max_depth,
            max_aliases=settings.graphql_max_aliases,
            max_fields=settings.graphql_max_fields,
            max_limit=settings.graphql_max_limit,
            max_cost=settings.graphql_max_cost,
            max_tokens=settings.graphql_max_tokens,
        ),
    )
    app.include_router(router)
    app.include_router(logs_router)
    install_scheduling(app)

    @app.get("/health/live", tags=["health"])
    async def live():
        return {"status": "ok"}

    @app.get("/health/ready", tags=["health"], responses=documented(503, s503="Not ready: the broker or Redis does not answer"))
    async def ready(request: Request):
        bus = getattr(request.app.state, "bus", None)
        if bus is None or not bus.healthy:
            reason = (bus.probe.error if bus is not None and bus.ready else None) or "the command bus is not running"
            return unavailable(reason, ready=False)
        try:
            await request.app.state.application.read.ping()
            restored = await request.app.state.application.idempotency.restored()
        except Exception as exc:
            return unavailable(f"Redis does not answer ({type(exc).__name__})", ready=False)
        if not restored:
            return unavailable("idempotency keys are being restored from the event log", ready=False)
        return JSONResponse({"ready": True})

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        if exc.status == 404 and not await request.app.state.application.idempotency.restored():
            # Redis lost its data and the read models are being rebuilt: "not found" may be untrue
            return unavailable("the read models are being rebuilt from the event log after Redis lost its data")
        return JSONResponse({"detail": [e.as_dict() for e in exc.errors]}, status_code=exc.status)

    @app.exception_handler(CommandRejected)
    async def rejected(request: Request, exc: CommandRejected):
        r = exc.rejection
        body = {"detail": r.message, "code": r.code, "rule": r.rule, "field": r.field, **r.details}
        return JSONResponse(body, status_code=http_status(r.code))

    @app.exception_handler(CommandTimeout)
    async def timeout(request: Request, exc: CommandTimeout):
        return unavailable(str(exc))

    for outage in OUTAGES:  # a dependency is down or exhausted: come back, never a 500

        @app.exception_handler(outage)
        async def dependency_down(request: Request, exc: Exception):
            log.warning("dependency unavailable", path=request.url.path, error=repr(exc)[:300])
            return unavailable(outage_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and isinstance(exc.detail, str):  # a body that is not even text
            return JSONResponse({"detail": [{"loc": ["body"], "msg": exc.detail, "type": "json_invalid"}]}, status_code=400)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        status = 400 if any(e["type"] == "json_invalid" for e in errors) else 422
        return JSONResponse({"detail": errors}, status_code=status)

    # A log batch may be as large as its own limit, plus room for the JSON around the records.
    log_batch = max(settings.max_body_bytes, settings.logs_max_batch_bytes + 65_536)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, by_path={"/api/v1/logs": log_batch, "/graphql": log_batch, "/": log_batch})
    app.add_middleware(AllowedMethods, openapi=lambda: app.openapi())

    generate_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = add_links(generate_openapi())
        return app.openapi_schema

    app.openapi = openapi
    return app


def main() -> None:
    import uvicorn

    from runledger.services.runtime.process import tune_gc

    settings = Settings()
    app = create_app(settings)
    tune_gc()
    # Open watch streams would hold a SIGTERM'd ingress until its pod is killed (uvicorn waits for
    # every response without a limit): they get 5 s, then close; their clients reconnect elsewhere
    # with Last-Event-ID.
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
