"""Logs over REST: write batches (``POST /api/v1/logs``), read a run's or a task run's lines,
and watch a run live (``GET /api/v1/flow_runs/{id}/watch``, Server-Sent Events).

Write rule: every record is checked on its own. Invalid records (with their index and field),
records over a limit and records whose flow run does not exist are refused; the valid records of
the same batch are stored anyway. The answer is 200 when every record was stored, else 422 with
``accepted`` (how many were stored) and ``detail`` (one entry per refused record). A batch over
the size or count limit is refused whole (413). "Stored" means durably in Kafka (acks=all).

Watch: one Redis subscription (a blocking XREAD on the run's timeline) per watched run in this
process, fanned out to every watcher of the run. A watcher subscribes, reads the history from the
store, then takes live entries newer than the last one it sent: no gap and no repeat, and the
same with ``Last-Event-ID`` on a reconnect.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any

import orjson
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import StringConstraints

from runledger.services.runtime import redis as redis_clients
from runledger.domain.run_requests import FieldError, RequestError
from runledger.domain.states import is_finished_name
from runledger.lru import LRU
from runledger.api_models import MAX_KEY_LENGTH
from runledger.messages.logs import LEVELS, BatchTooLarge, LogLimits, RecordError, batch_key, chunks, content_key, logs_expire_at_ms, parse_time, validate_batch
from runledger.services.ingress.errors import RETRY_AFTER_SECONDS, documented
from runledger.services.ingress.responses import JSONResponse
from runledger.services.runtime import kafka as clients
from runledger.services.runtime.logstore import LogStore, Page, entry_view, parse_id
from runledger.settings import Settings
from runledger.topics import LOGS


KNOWN_RUNS = 50_000  # run ids the ingress remembers as existing (about 10 MB)


class LogsUnavailable(Exception):
    pass


@dataclass
class WriteResult:
    accepted: int
    errors: list[RecordError]
    total: int


class LogsContext:
    """The ingress's log clients: a producer for the logs topic, the store, the watch feeds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = LogLimits(
            max_message_bytes=settings.logs_max_message_bytes,
            max_batch_bytes=settings.logs_max_batch_bytes,
            max_records=settings.logs_max_records,
        )
        self.redis = redis_clients.client(settings)
        self.store = LogStore(self.redis, settings.redis_prefix)
        self.producer = None
        self.topic = None
        self.feeds: dict[str, RunFeed] = {}
        self._lock = asyncio.Lock()
        # Runs seen to exist. A run is never deleted, so a running flow's next batches skip the
        # read-model lookup (a Redis round trip per batch).
        self.known_runs: LRU[str, bool] = LRU(KNOWN_RUNS)

    async def producer_ready(self):
        if self.producer is None:
            async with self._lock:
                if self.producer is None:
                    topics = await clients.ensure_topics(self.settings)
                    producer = clients.producer(self.settings, linger_ms=2)
                    await producer.start()
                    self.topic = topics[LOGS].name
                    self.producer = producer
        return self.producer

    async def close(self) -> None:
        for feed in list(self.feeds.values()):
            feed.close()
        if self.producer is not None:
            await self.producer.stop()
        await self.redis.aclose()

    async def feed(self, run_id: str) -> "RunFeed":
        """The run's feed, started by the first watcher. A start that fails (Redis down, or that
        watcher gone meanwhile) leaves no feed behind: the watchers waiting on it start another,
        or fail themselves (their stream drops; the client reconnects)."""
        while True:
            feed = self.feeds.get(run_id)
            if feed is None:
                feed = RunFeed(self, run_id)
                self.feeds[run_id] = feed
                try:
                    await feed.start()
                except BaseException:
                    if self.feeds.get(run_id) is feed:
                        del self.feeds[run_id]
                    feed.failed = True
                    feed.close()
                    feed.started.set()
                    raise
            await feed.started.wait()
            if not feed.failed:
                return feed


def logs_of(request_or_app) -> LogsContext:
    app = getattr(request_or_app, "app", request_or_app)
    ctx = getattr(app.state, "logs", None)
    if ctx is None:
        application = getattr(app.state, "application", None)
        ctx = LogsContext(application.settings if application is not None else Settings())
        app.state.logs = ctx
    return ctx


@asynccontextmanager
async def lifespan(app):
    yield
    ctx = getattr(app.state, "logs", None)
    if ctx is not None:
        await ctx.close()


router = APIRouter(prefix="/api/v1", default_response_class=JSONResponse, lifespan=lifespan)


# -- write ---------------------------------------------------------------------------------------
async def write_logs(app, records: Any, key: str | None = None) -> WriteResult:
    """Validate, refuse unknown runs, produce the rest keyed by run; return once durable. A batch
    with an idempotency ``key`` is stored once however often it is sent (``messages.logs``)."""
    ctx = logs_of(app)
    now = datetime.now(timezone.utc)
    batch = validate_batch(records, ctx.limits, now)  # BatchTooLarge: nothing written
    total = len(records) if isinstance(records, list) else 1
    run_ids = list(dict.fromkeys(line.flow_run_id for line in batch.lines))
    known = {r for r in run_ids if ctx.known_runs.get(r)}
    if len(known) < len(run_ids):
        for doc in await app.state.application.read.flow_runs([r for r in run_ids if r not in known]):
            ctx.known_runs.put(doc["id"], True)
            known.add(doc["id"])
    if len(known) < len(run_ids) and not await app.state.application.idempotency.restored():
        # Redis lost its data and the read models are being rebuilt from the log: "no such run"
        # may be untrue. Nothing is written, so the client's retry of the whole batch is exact.
        raise LogsUnavailable("the read models are being rebuilt from the event log after Redis lost its data; retry the batch")
    accepted, errors = [], list(batch.errors)
    for line in batch.lines:
        if line.flow_run_id in known:
            accepted.append(line)
        else:
            errors.append(RecordError(line.index, "flow_run_id", f"no flow run with id {line.flow_run_id}", "not_found"))
    errors.sort(key=lambda e: e.index)
    parts, _ = chunks(accepted, ctx.limits, key or content_key(records, batch), int(now.timestamp() * 1000))
    if parts:
        producer = await ctx.producer_ready()
        try:
            futures = [await producer.send(ctx.topic, value, key=run_id.encode()) for run_id, value in parts]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise LogsUnavailable(f"the log topic did not acknowledge the batch ({type(exc).__name__}); retry it") from exc
    return WriteResult(len(accepted), errors, total)


def result_body(result: WriteResult) -> tuple[dict, int]:
    body = {"success": not result.errors, "accepted": result.accepted, "refused": len({e.index for e in result.errors})}
    if result.errors:
        body["detail"] = [e.as_dict() for e in result.errors]
        return body, 422
    return body, 200


LOG_RECORD = {
    "type": "object",
    "additionalProperties": False,
    "required": ["flow_run_id", "message"],
    "properties": {
        "flow_run_id": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "\\S", "description": "An existing flow run"},
        "task_run_id": {"type": ["string", "null"], "maxLength": 200},
        "timestamp": {
            "anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}, {"type": "null"}],
            "description": "ISO 8601 (no zone = UTC) or epoch seconds; the server's time when missing",
        },
        "level": {
            "anyOf": [{"type": "string", "enum": list(LEVELS)}, {"type": "integer", "enum": [10, 20, 30, 40, 50]}, {"type": "null"}],
            "description": "INFO when missing",
        },
        "name": {"type": ["string", "null"]},
        "message": {"type": "string"},
        "info": {"description": "Any JSON"},
    },
}

WRITE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["logs"],
                    "additionalProperties": False,
                    "properties": {
                        "logs": {"type": "array", "items": LOG_RECORD},
                        "idempotency_key": {
                            "type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH,
                            "description": "Names this batch: sent again (say, after a lost answer) within 24 h, it is not stored twice",
                        },
                    },
                    "description": "A batch (a bare list of records, or one record, is taken too)",
                },
                "example": {"logs": [{"flow_run_id": "…", "level": "INFO", "name": "prefect", "message": "hello"}]},
            }
        },
    }
}


@router.post(
    "/logs",
    tags=["logs"],
    openapi_extra=WRITE_BODY,
    responses=documented(
        400, 413, 422, 503,
        s413="Batch over a limit (RUNLEDGER_LOGS_MAX_BATCH_BYTES, RUNLEDGER_LOGS_MAX_RECORDS, or the body limit)",
        s422="Some records refused, each with its index and field (the others were stored: see `accepted`)",
    ),
)
async def post_logs(request: Request) -> Any:
    """Write a batch: ``{"logs": [record, ...], "idempotency_key"?: K}`` (or one record, or a bare
    list). A batch with a key is stored once however often it is re-sent within 24 h. A record:
    ``flow_run_id``, ``task_run_id``?, ``timestamp``? (default: now), ``level``? (INFO),
    ``name``?, ``message``, ``info``? (JSON)."""
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        return JSONResponse({"detail": [{"loc": ["body"], "msg": f"malformed JSON ({exc})", "type": "json_invalid"}]}, status_code=400)
    wrapped = isinstance(body, dict) and "logs" in body
    records = body.get("logs") if wrapped else body
    if not isinstance(records, (list, dict)):
        loc = ["body", "logs"] if isinstance(body, dict) else ["body"]
        return JSONResponse({"detail": [{"loc": loc, "msg": "expected a list of log records (or one record)", "type": "list_type"}]}, status_code=422)
    extra = sorted(body.keys() - {"logs", "idempotency_key"}) if wrapped else []
    if extra:
        return JSONResponse({"detail": [{"loc": ["body", extra[0]], "msg": "unknown field", "type": "extra_forbidden"}]}, status_code=422)
    try:
        key = batch_key(body.get("idempotency_key")) if wrapped else None
    except ValueError as exc:
        return JSONResponse({"detail": [{"loc": ["body", "idempotency_key"], "msg": str(exc), "type": "value_error"}]}, status_code=422)
    try:
        result = await write_logs(request.app, records, key)
    except BatchTooLarge as exc:
        return JSONResponse({"detail": [{"loc": ["body", exc.field], "msg": str(exc), "type": "too_large"}]}, status_code=413)
    except LogsUnavailable as exc:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    body, status = result_body(result)
    return JSONResponse(body, status_code=status)


# -- read ----------------------------------------------------------------------------------------
def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise RequestError(422, [FieldError(("query", name), str(exc), "datetime_parsing")]) from None


def _levels(level: list[str] | None, min_level: str | None) -> list[str] | None:
    chosen = None
    if level:
        wanted = [v.upper() for item in level for v in item.split(",") if v]
        bad = [v for v in wanted if v not in LEVELS]
        if bad:
            raise RequestError(422, [FieldError(("query", "level"), f"{bad[0]!r} is not one of {', '.join(LEVELS)}", "enum")])
        chosen = wanted
    if min_level:
        if min_level.upper() not in LEVELS:
            raise RequestError(422, [FieldError(("query", "min_level"), f"{min_level!r} is not one of {', '.join(LEVELS)}", "enum")])
        above = list(LEVELS[LEVELS.index(min_level.upper()):])
        chosen = [v for v in (chosen or above) if v in above]
    return chosen


async def read_page(request: Request, run_id: str, task_run_id: str | None, level, min_level, after, since, before, until, order, limit, cursor) -> Page:
    try:
        return await logs_of(request).store.query(
            run_id,
            task_run_id=task_run_id,
            levels=_levels(level, min_level),
            after=_time(after, "after") or _time(since, "since"),
            after_inclusive=after is None and since is not None,
            before=_time(before, "before") or _time(until, "until"),
            before_inclusive=before is None,
            descending=order == "desc",
            limit=limit,
            cursor=cursor,
        )
    except ValueError as exc:
        raise RequestError(400, [FieldError(("query", "cursor"), f"not a cursor this API gave out ({exc})", "invalid_cursor")]) from None


def _ci(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" for c in word)


_LEVEL = "(?:" + "|".join(_ci(name) for name in LEVELS) + ")"
LevelList = Annotated[str, StringConstraints(pattern=f"^,*(?:{_LEVEL}(?:,+{_LEVEL})*)?,*$")]
LEVEL_LIST = Query(None, description="Level names, any case (repeat or comma-separate)")
MIN_LEVEL = Query(None, pattern=f"^{_LEVEL}?$", description="Lines at this level or above")
TIME = {"json_schema_extra": {"format": "date-time"}}


READ_DOC = (
    "Lines ordered by timestamp then arrival. Filters: `level` (repeat or comma-separate), `min_level`, "
    "`after`/`since` (exclusive/inclusive lower bound), `before`/`until` (exclusive/inclusive upper bound). "
    "Pass `next_cursor` back as `cursor` for the next page (null: no more)."
)


@router.get("/flow_runs/{flow_run_id}/logs", tags=["logs"], description=READ_DOC,
            responses=documented(400, 404, 422, 503, s400="A cursor that this API did not give out"))
async def flow_run_logs(
    flow_run_id: str,
    request: Request,
    task_run_id: str | None = None,
    level: list[LevelList] | None = LEVEL_LIST,
    min_level: str | None = MIN_LEVEL,
    after: str | None = Query(None, **TIME),
    since: str | None = Query(None, **TIME),
    before: str | None = Query(None, **TIME),
    until: str | None = Query(None, **TIME),
    order: str = Query("asc", pattern="^(asc|desc)$"),
    limit: int = Query(1000, ge=1, le=10_000),
    cursor: str | None = None,
) -> Any:
    await request.app.state.application.get_flow_run(flow_run_id)  # 404 for an unknown run
    page = await read_page(request, flow_run_id, task_run_id, level, min_level, after, since, before, until, order, limit, cursor)
    return {"logs": page.lines, "next_cursor": page.next_cursor}


@router.get("/task_runs/{task_run_id}/logs", tags=["logs"], description=READ_DOC,
            responses=documented(400, 404, 422, 503, s400="A cursor that this API did not give out"))
async def task_run_logs(
    task_run_id: str,
    request: Request,
    level: list[LevelList] | None = LEVEL_LIST,
    min_level: str | None = MIN_LEVEL,
    after: str | None = Query(None, **TIME),
    since: str | None = Query(None, **TIME),
    before: str | None = Query(None, **TIME),
    until: str | None = Query(None, **TIME),
    order: str = Query("asc", pattern="^(asc|desc)$"),
    limit: int = Query(1000, ge=1, le=10_000),
    cursor: str | None = None,
) -> Any:
    doc = await request.app.state.application.read.task_run(task_run_id)
    if doc is None:
        raise RequestError(404, [FieldError(("path", "task_run_id"), f"no task run with id {task_run_id}", "not_found")])
    page = await read_page(request, doc["flow_run_id"], task_run_id, level, min_level, after, since, before, until, order, limit, cursor)
    return {"logs": page.lines, "next_cursor": page.next_cursor}


# -- watch ---------------------------------------------------------------------------------------
class RunFeed:
    """One blocking XREAD on a run's timeline, shared by every watcher of the run in this process."""

    BLOCK_MS = 5000

    def __init__(self, ctx: LogsContext, run_id: str) -> None:
        self.ctx, self.run_id = ctx, run_id
        self.queues: set[asyncio.Queue] = set()
        self.started = asyncio.Event()
        self.failed = False  # its start failed: never set up, waiters go elsewhere
        self.task: asyncio.Task | None = None
        self.last = "0-0"
        self.closed = False  # a cancel can be lost (runtime/tasks.py): the loop also checks this

    async def start(self) -> None:
        self.last = await self.ctx.store.last_timeline_id(self.run_id)
        self.redis = redis_clients.client(self.ctx.settings, max_connections=1)
        self.task = asyncio.create_task(self._follow())
        self.started.set()

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self.queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self.queues.discard(queue)
        if not self.queues and self.ctx.feeds.get(self.run_id) is self:
            del self.ctx.feeds[self.run_id]
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()

    async def _follow(self) -> None:
        key = self.ctx.store.timeline_key(self.run_id)
        try:
            while not self.closed:
                try:
                    reply = await self.redis.xread({key: self.last}, count=1000, block=self.BLOCK_MS)
                except asyncio.CancelledError:
                    raise
                except Exception:  # Redis hiccup: watchers keep waiting; try again
                    await asyncio.sleep(0.5)
                    continue
                for _, entries in reply or []:
                    batch = [(i.decode(), fields) for i, fields in entries]
                    if batch:
                        self.last = batch[-1][0]
                        for queue in list(self.queues):
                            queue.put_nowait(batch)
        finally:
            await self.redis.aclose()


def _sse(entry_id: str, kind: str, data: dict) -> bytes:
    return b"id: " + entry_id.encode() + b"\nevent: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


# Event ids of a run whose logs have expired: before any the timeline could have had.
EXPIRED_STATE_ID, EXPIRED_END_ID = "0-1", "0-2"


def _logs_expired(run: dict, retention_days: float) -> bool:
    """Whether a finished run's timeline has passed its retention (the log service expires it at
    finish + ``logs_retention_days``): a watch then has only the read model's final state."""
    state = run.get("state") or {}
    if not is_finished_name(state.get("type")) or not state.get("timestamp"):
        return False
    expire_at_ms = logs_expire_at_ms(state["timestamp"], retention_days)
    return expire_at_ms is not None and time.time() * 1000 >= expire_at_ms


async def watch_events(request: Request, run_id: str, last_event_id: str | None, run: dict | None = None):
    ctx = logs_of(request)
    feed = await ctx.feed(run_id)
    queue = feed.subscribe()
    keepalive = ctx.settings.logs_watch_keepalive_seconds
    try:
        sent = parse_id(last_event_id) if last_event_id else (0, 0)
        last_state: str | None = None
        after = last_event_id
        # History (and, for a resumed stream, what it missed): everything after the client's last id.
        history: list[tuple[str, dict]] = []
        while True:
            chunk = await ctx.store.timeline(run_id, after, 2000)
            history += chunk
            if len(chunk) < 2000:
                break
            after = chunk[-1][0]
        if not history and last_event_id and await _ended_at(ctx, run_id, last_event_id):
            return  # a client reconnecting after the end (an EventSource does): nothing more will come
        if not history and not last_event_id and run is not None and _logs_expired(run, ctx.settings.logs_retention_days):
            # Nothing left to replay and nothing will come: the final state, then the end.
            state = run["state"]
            yield _sse(EXPIRED_STATE_ID, "state", {k: state.get(k) for k in ("type", "message", "timestamp", "version")})
            yield _sse(EXPIRED_END_ID, "end", {"version": state.get("version")})
            return
        views = [(i, *entry_view(i, f)) for i, f in history]
        last_state_at = max((n for n, (_, kind, _) in enumerate(views) if kind == "state"), default=-1)
        if last_event_id:  # the last state the client saw before it reconnected decides nothing: look it up
            previous = await _last_state_before(ctx, run_id, last_event_id)
            last_state = previous
        for n, (entry_id, kind, data) in enumerate(views):
            if kind == "state":
                last_state = data.get("type")
            yield _sse(entry_id, kind, data)
            sent = parse_id(entry_id)
            if kind == "end" and n > last_state_at and is_finished_name(last_state):
                return
        while True:
            try:
                batch = await asyncio.wait_for(queue.get(), keepalive)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return
                yield b": keep-alive\n\n"
                continue
            for entry_id, fields in batch:
                if parse_id(entry_id) <= sent:
                    continue
                kind, data = entry_view(entry_id, fields)
                if kind == "state":
                    last_state = data.get("type")
                yield _sse(entry_id, kind, data)
                sent = parse_id(entry_id)
                if kind == "end" and is_finished_name(last_state):
                    return
    finally:
        feed.unsubscribe(queue)


async def _ended_at(ctx: LogsContext, run_id: str, entry_id: str) -> bool:
    """Whether ``entry_id`` is the stream's end: the expired-logs end, or an end marker after a
    finished state."""
    if entry_id == EXPIRED_END_ID:
        return True
    raw = await ctx.redis.xrange(ctx.store.timeline_key(run_id), min=entry_id, max=entry_id)
    if not raw or entry_view(entry_id, raw[0][1])[0] != "end":
        return False
    return is_finished_name(await _last_state_before(ctx, run_id, entry_id))


async def _last_state_before(ctx: LogsContext, run_id: str, entry_id: str) -> str | None:
    raw = await ctx.redis.xrevrange(ctx.store.timeline_key(run_id), max=entry_id, min="-", count=5000)
    for i, fields in raw:
        kind, data = entry_view(i.decode(), fields)
        if kind == "state":
            return data.get("type")
    return None


@router.get(
    "/flow_runs/{flow_run_id}/watch",
    tags=["logs"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events: `state`, `log`, `end`"}},
)
async def watch(flow_run_id: str, request: Request) -> StreamingResponse:
    """The run's state changes and log lines as Server-Sent Events, history first, then live;
    each event has an id, and a reconnect with ``Last-Event-ID`` resumes after it. Events:
    ``state`` (type, message, timestamp, version), ``log`` (a line), ``end`` (the run finished
    and its last lines were sent; the stream closes)."""
    run = await request.app.state.application.get_flow_run(flow_run_id)  # 404 for an unknown run
    last_event_id = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if last_event_id:
        try:
            parse_id(last_event_id)
        except ValueError:
            raise RequestError(422, [FieldError(("header", "Last-Event-ID"), f"{last_event_id!r} is not an event id of this stream", "value_error")]) from None
    return StreamingResponse(
        watch_events(request, flow_run_id, last_event_id, run),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
