"""Log records: what a client may send (Prefect 1.x ``write_run_logs`` shape), the limits, and
the record the ingress puts on the ``logs`` topic. Pure: no I/O.

A batch is validated record by record. A record that is invalid (or over a limit) is refused
with its index and field; the others are kept. The ingress then refuses records whose flow run
does not exist (``unknown_run``), and writes the rest, keyed by flow-run id, one Kafka record
per run and chunk (``LogChunk``), so a run's lines stay in one partition, in order.

A line's identity is (topic partition, offset, index in the chunk): the log store applies a
chunk at most once per run (it remembers the last offset it applied for each run), so a
redelivered chunk never duplicates a line.

A client that re-sends a batch (its first attempt's answer was lost) makes new records, with new
offsets. A batch sent with an ``idempotency_key`` is stored once anyway: each of its chunks carries
``batch`` = ``<key>#<index of the chunk's first record>`` and the time it was sent, and the store
drops a chunk whose ``batch`` it already applied for that run within ``BATCH_KEY_SECONDS`` (a
repeat refreshes it; at most ``BATCH_KEYS_PER_RUN`` per run are remembered). A key names one batch:
a repeat is dropped even if its records differ. A batch sent without a key in which every record
carries its own timestamp is keyed by its content (``content_key``: a hash of its lines as stored,
with their indexes): the Prefect 1.x client sends no key but re-sends a batch after a 5xx or a
dropped connection, and two batches identical to the microsecond are that re-send. Records without a timestamp (an agent's) get the server's time, so a
batch of them is not keyed: the same message sent twice on purpose must be stored twice. Chunk
boundaries depend only on the records' sizes and the limits, so a re-sent batch is cut the same
way (chunks are 512 KiB: a batch of one run smaller than that is one chunk).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson
from pydantic import BaseModel

from runledger.api_models import MAX_KEY_LENGTH

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LEVEL_CODE = {"DEBUG": "D", "INFO": "I", "WARNING": "W", "ERROR": "E", "CRITICAL": "C"}
LEVEL_OF_CODE = {v: k for k, v in LEVEL_CODE.items()}
LEVEL_NUMBER = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
# Python's logging names a client may send (``logging.getLevelName``), mapped onto the five.
LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL", "NOTSET": "DEBUG"}
FIELDS = ("flow_run_id", "task_run_id", "timestamp", "level", "name", "message", "info")
FIELD_SET = frozenset(FIELDS)
BATCH_KEY_SECONDS = 86_400  # how long the store remembers a batch key per run (refreshed by a repeat)
BATCH_KEYS_PER_RUN = 10_000  # and how many, the oldest forgotten first


@dataclass(frozen=True)
class LogLimits:
    max_message_bytes: int = 1_000_000  # Prefect 1.x: MAX_LOG_LENGTH, 1 MB per message
    max_batch_bytes: int = 4_000_000  # Prefect 1.x: 4 MB per batch
    max_records: int = 50_000
    max_name_bytes: int = 1_000
    max_info_bytes: int = 100_000
    chunk_bytes: int = 512 * 1024  # one Kafka record carries at most this many bytes of lines


@dataclass
class RecordError:
    index: int
    field: str
    msg: str
    type: str = "value_error"

    def as_dict(self, prefix: tuple = ("body", "logs")) -> dict[str, Any]:
        loc = [*prefix, self.index] + ([self.field] if self.field else [])
        return {"loc": loc, "msg": self.msg, "type": self.type, "index": self.index, "field": self.field}


@dataclass(slots=True)
class LogLine:
    """One validated record, as stored and as read back. ``timestamp`` is in UTC."""

    flow_run_id: str
    task_run_id: str | None
    timestamp: datetime
    level: str
    name: str
    message: str
    info: orjson.Fragment | None = None  # the info JSON, already encoded
    index: int = 0  # its position in the batch the client sent (error reports, chunk names)
    encoded: bytes = field(init=False, repr=False)  # as stored, see __post_init__

    def __post_init__(self) -> None:
        """The line as stored: JSON without the flow run id (the chunk's). orjson writes a UTC
        datetime as ``isoformat()`` with ``Z``, microseconds only when there are some."""
        self.encoded = orjson.dumps(
            {"task_run_id": self.task_run_id, "timestamp": self.timestamp, "level": self.level,
             "name": self.name, "message": self.message, "info": self.info},
            option=orjson.OPT_UTC_Z,
        )

    def sort_key(self) -> str:
        """Its place in the store's index: ``timestamp_key`` and the level code (17 characters)."""
        return timestamp_key(self.timestamp) + LEVEL_CODE[self.level]


@dataclass
class ValidatedBatch:
    lines: list[LogLine] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)


class BatchTooLarge(ValueError):
    def __init__(self, msg: str, field_name: str = "logs") -> None:
        super().__init__(msg)
        self.field = field_name


def batch_key(value: Any) -> str | None:
    """A log batch's optional ``idempotency_key``; ``ValueError`` says why it is not one."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    if not value or len(value) > MAX_KEY_LENGTH:
        raise ValueError(f"must be 1 to {MAX_KEY_LENGTH} characters long")
    return value


def content_key(records: Any, batch: "ValidatedBatch") -> str | None:
    """The implicit key of an unkeyed batch whose every record has a timestamp (None otherwise):
    a hash of its valid lines as they are stored, each with its index, and of its size, so that
    a re-send is recognised whatever the JSON's key order or spelling of a time or a level."""
    items = [records] if isinstance(records, dict) else records
    if not isinstance(items, list) or not items or not all(type(r) is dict and r.get("timestamp") is not None for r in items):
        return None
    digest = hashlib.blake2b(b"%d\n" % len(items), digest_size=16)
    digest.update(orjson.dumps([(line.index, line.flow_run_id) for line in batch.lines]))
    digest.update(b"\n".join([line.encoded for line in batch.lines]))  # an encoded line holds no raw newline
    return "content:" + digest.hexdigest()


def logs_expire_at_ms(finished_at: str, retention_days: float) -> int | None:
    """When a finished run's logs expire, in ms since the epoch: the time of its finishing state
    (ISO 8601) plus ``retention_days``; None when they are kept for ever (0)."""
    if retention_days <= 0:
        return None
    return int((datetime.fromisoformat(str(finished_at).replace("Z", "+00:00")).timestamp() + retention_days * 86400) * 1000)


def micros(t: datetime) -> int:
    """Microseconds since the epoch: the store's ordering key."""
    return int(t.timestamp() * 1_000_000) if t.tzinfo else int(t.replace(tzinfo=timezone.utc).timestamp() * 1_000_000)


MAX_US = 10**16 - 1


def timestamp_key(t: datetime) -> str:
    """``micros`` as 16 digits, clamped to the years 1970-2286: index members sort by it as text.
    (Inlined for an aware time: it is computed for every line a client sends.)"""
    us = int(t.timestamp() * 1_000_000) if t.tzinfo else micros(t)
    return "%016d" % (us if 0 <= us <= MAX_US else min(max(us, 0), MAX_US))


def parse_time(value: Any) -> datetime:
    """ISO 8601 (``Z`` or an offset; no zone = UTC) or epoch seconds, as a UTC datetime."""
    if type(value) is str:
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            t = _parse_loose(value)
    elif isinstance(value, bool):
        raise ValueError("expected an ISO 8601 timestamp")
    elif isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    elif isinstance(value, datetime):
        t = value
    else:
        raise ValueError("expected an ISO 8601 timestamp")
    if t.tzinfo is None:
        return t.replace(tzinfo=timezone.utc)
    return t if t.tzinfo is timezone.utc else t.astimezone(timezone.utc)


def _parse_loose(value: str) -> datetime:
    text = value.strip()
    if not text:
        raise ValueError("expected an ISO 8601 timestamp")
    if text.endswith("z"):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 timestamp") from None


def _text(record: dict, name: str, i: int, errors: list[RecordError], limit: int, required: bool) -> str | None:
    value = record.get(name)
    if value is None:
        if required:
            errors.append(RecordError(i, name, "field required", "missing"))
        return None
    if type(value) is not str:
        errors.append(RecordError(i, name, f"expected a string, got {type(value).__name__}", "string_type"))
        return None
    if len(value) * 4 > limit:  # else it fits whatever it holds: UTF-8 takes at most 4 bytes a character
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > limit:
            errors.append(RecordError(i, name, f"{name} of {size} bytes is over the limit of {limit} bytes", "too_large"))
            return None
    return value


def _level(value: Any) -> str | None:
    """One of ``LEVELS`` for a level name (any case, Python's aliases) or number; None if not one."""
    if value is None:
        return "INFO"
    if type(value) is str and value in LEVEL_CODE:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}.get(value, value)
    if isinstance(value, str):
        value = LEVEL_ALIASES.get(value.upper(), value.upper())
    return value if isinstance(value, str) and value in LEVEL_CODE else None


def _checked_line(record: Any, i: int, limits: LogLimits, now: datetime, errors_out: list[RecordError]) -> LogLine | None:
    """A record's line, checked field by field: every problem is added to ``errors_out`` with
    the record's index and the field, and then there is no line."""
    if not isinstance(record, dict):
        errors_out.append(RecordError(i, "", f"expected an object, got {type(record).__name__}", "dict_type"))
        return None
    errors: list[RecordError] = []
    if not record.keys() <= FIELD_SET:
        for name in sorted(record.keys() - FIELD_SET):
            errors.append(RecordError(i, name, "unknown field", "extra_forbidden"))
    run_id = _text(record, "flow_run_id", i, errors, 200, required=True)
    if run_id is not None and not run_id.strip():
        errors.append(RecordError(i, "flow_run_id", "must not be empty"))
    task_run_id = _text(record, "task_run_id", i, errors, 200, required=False)
    name = _text(record, "name", i, errors, limits.max_name_bytes, required=False)
    message = _text(record, "message", i, errors, limits.max_message_bytes, required=True)
    level = _level(record.get("level"))
    if level is None:
        errors.append(RecordError(i, "level", f"{record.get('level')!r} is not one of {', '.join(LEVELS)}", "enum"))
    timestamp = now
    if record.get("timestamp") is not None:
        try:
            timestamp = parse_time(record["timestamp"])
        except (ValueError, OverflowError, OSError) as exc:
            errors.append(RecordError(i, "timestamp", str(exc), "datetime_parsing"))
    info = record.get("info")
    if info is not None:
        try:
            info_json = orjson.dumps(info)
        except (TypeError, orjson.JSONEncodeError) as exc:
            errors.append(RecordError(i, "info", f"not JSON: {exc}", "json_invalid"))
        else:
            if len(info_json) > limits.max_info_bytes:
                errors.append(RecordError(i, "info", f"info of {len(info_json)} bytes is over the limit of {limits.max_info_bytes} bytes", "too_large"))
            info = orjson.Fragment(info_json)  # encoded once: the line's encoding embeds it as it is
    if errors:
        errors_out += errors
        return None
    return LogLine(run_id, task_run_id, timestamp, level, name or "", message, info, i)


def _plainly_valid(record: Any, i: int, now: datetime, message_chars: int, name_chars: int, max_info_bytes: int) -> LogLine | None:
    """The line of a record that is valid at a glance (the shape clients send: strings well
    within their limits, a level name, an ISO 8601 timestamp), else None and ``validate_batch``
    checks it field by field (``_checked_line``). Only a speed-up (it is on every line's path): whatever it accepts,
    the full check accepts the same way."""
    if type(record) is not dict or not record.keys() <= FIELD_SET:
        return None
    get = record.get
    run_id, message, task_run_id, name, level = get("flow_run_id"), get("message"), get("task_run_id"), get("name"), get("level")
    if not (type(run_id) is str and 0 < len(run_id) <= 50 and not run_id.isspace()
            and type(message) is str and len(message) <= message_chars
            and (task_run_id is None or (type(task_run_id) is str and len(task_run_id) <= 50))
            and (name is None or (type(name) is str and len(name) <= name_chars))
            and (level is None or (type(level) is str and level in LEVEL_CODE))):
        return None
    timestamp = get("timestamp")
    if timestamp is None:
        timestamp = now
    elif type(timestamp) is str:
        try:
            timestamp = datetime.fromisoformat(timestamp)
            if timestamp.tzinfo is None:
                timestamp = timestamp.replace(tzinfo=timezone.utc)
            elif timestamp.tzinfo is not timezone.utc:
                timestamp = timestamp.astimezone(timezone.utc)
        except (ValueError, OverflowError):
            return None
    else:
        return None
    info = get("info")
    if info is not None:
        try:
            info_json = orjson.dumps(info)
        except (TypeError, orjson.JSONEncodeError):
            return None
        if len(info_json) > max_info_bytes:
            return None
        info = orjson.Fragment(info_json)
    return LogLine(run_id, task_run_id, timestamp, level or "INFO", name or "", message, info, i)


def validate_batch(records: Any, limits: LogLimits, now: datetime) -> ValidatedBatch:
    """Validate a batch: a list of records, or one record. Each invalid record is refused with
    its index and field; the valid ones are returned. A batch over the count limit raises
    ``BatchTooLarge`` (nothing is written)."""
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list):
        raise BatchTooLarge("logs: expected a list of log records (or one record)")
    if len(records) > limits.max_records:
        raise BatchTooLarge(f"logs: {len(records)} records is over the limit of {limits.max_records} per batch")
    out = ValidatedBatch()
    message_chars, name_chars = limits.max_message_bytes // 4, limits.max_name_bytes // 4
    for i, record in enumerate(records):
        line = _plainly_valid(record, i, now, message_chars, name_chars, limits.max_info_bytes)
        if line is None:
            line = _checked_line(record, i, limits, now, out.errors)
        if line is not None:
            out.lines.append(line)
    return out


LINE_KEY_LENGTH = 17  # a line's sort key in ``LogChunk.keys``: 16-digit µs timestamp + level code
_LINE_KEYS = re.compile(r"(?:[0-9]{16}[DIWEC])*")


def line_keys(lines: list[dict]) -> str:
    """The lines' sort keys as ``LogChunk.keys`` carries them, for records that came without:
    ``LogLine.sort_key`` of each stored line (zeros for a timestamp missing or not ISO 8601, INFO's
    code for an unknown level)."""
    out = []
    for line in lines:
        try:
            ts = timestamp_key(datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")))
        except (KeyError, AttributeError, ValueError, TypeError):
            ts = "0" * 16
        level = line.get("level")
        out.append(ts + (LEVEL_CODE.get(level, "I") if isinstance(level, str) else "I"))
    return "".join(out)


class LogChunk(BaseModel):
    """The value of one record on the ``logs`` topic: lines of one flow run (the record key), or
    the end marker the log service writes after a run finished (``end`` = the finishing state's
    version), which tells watchers that every line acknowledged before it has been stored.
    ``batch`` and ``sent_ms``: the chunk's identity within a keyed batch, and when it was sent.
    ``keys``: for each line, in order, its 16-digit µs timestamp (``timestamp_key``) and
    level code, 17 characters per line, so the log service need not parse every line's timestamp.
    Records written before it existed have none (the log service computes them from the lines),
    and ``decode`` drops a malformed one the same way: the lines are what matters."""

    flow_run_id: str
    lines: list[dict[str, Any]] = []
    end: int | None = None
    batch: str | None = None
    sent_ms: int | None = None
    keys: str | None = None

    def encode(self) -> bytes:
        body: dict[str, Any] = {"flow_run_id": self.flow_run_id, "lines": self.lines}
        for name in ("end", "batch", "sent_ms", "keys"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        return orjson.dumps(body)

    @staticmethod
    def decode(raw: bytes) -> "LogChunk":
        body = orjson.loads(raw)
        if not isinstance(body, dict) or not isinstance(body.get("flow_run_id"), str) or not isinstance(body.get("lines", []), list):
            raise ValueError("not a log chunk")
        end = body.get("end")
        if end is not None and (not isinstance(end, int) or isinstance(end, bool)):
            raise ValueError("end must be an integer")
        lines = body.get("lines", [])
        if not all(isinstance(line, dict) for line in lines):
            raise ValueError("every line must be an object")
        batch, sent_ms = body.get("batch"), body.get("sent_ms")
        if batch is not None and (not isinstance(batch, str) or not isinstance(sent_ms, int) or isinstance(sent_ms, bool)):
            raise ValueError("batch must be a string, with sent_ms an integer")
        keys = body.get("keys")
        if keys is not None and not (isinstance(keys, str) and len(keys) == LINE_KEY_LENGTH * len(lines) and _LINE_KEYS.fullmatch(keys)):
            keys = None
        return LogChunk.model_construct(flow_run_id=body["flow_run_id"], lines=lines, end=end,
                                        batch=batch, sent_ms=sent_ms if batch is not None else None, keys=keys)


def chunks(lines: list[LogLine], limits: LogLimits, key: str | None = None, sent_ms: int = 0) -> tuple[list[tuple[str, bytes]], int]:
    """Group ``lines`` by flow run (keeping their order) into encoded ``LogChunk`` values of at
    most ``limits.chunk_bytes`` of lines each: ``[(flow_run_id, value), ...]``; also return the
    batch's size in bytes. Raises ``BatchTooLarge`` when it is over ``limits.max_batch_bytes``.
    With an idempotency ``key``, each chunk is named ``<key>#<index of its first record>``. Each
    chunk carries its lines' ``sort_key``s, so the log service need not parse their timestamps."""
    by_run: dict[str, list[LogLine]] = {}
    for line in lines:
        by_run.setdefault(line.flow_run_id, []).append(line)
    total = sum([len(line.encoded) for line in lines])
    if total > limits.max_batch_bytes:
        raise BatchTooLarge(f"logs: the batch is {total} bytes, over the limit of {limits.max_batch_bytes} bytes")
    out: list[tuple[str, bytes]] = []
    for run_id, run_lines in by_run.items():
        head = b'{"flow_run_id":' + orjson.dumps(run_id)

        def chunk(part: list[LogLine]) -> tuple[str, bytes]:
            named = b"" if key is None else b',"batch":' + orjson.dumps(f"{key}#{part[0].index}") + b',"sent_ms":' + str(sent_ms).encode()
            keys = "".join([line.sort_key() for line in part]).encode()
            return run_id, head + named + b',"keys":"' + keys + b'","lines":[' + b",".join([line.encoded for line in part]) + b"]}"

        current: list[LogLine] = []
        size = 0
        for line in run_lines:
            if current and size + len(line.encoded) > limits.chunk_bytes:
                out.append(chunk(current))
                current, size = [], 0
            current.append(line)
            size += len(line.encoded)
        out.append(chunk(current))
    return out, total


def read_view(line: dict[str, Any], flow_run_id: str, line_id: str) -> dict[str, Any]:
    """A stored line as the APIs return it."""
    return {"id": line_id, "flow_run_id": flow_run_id, **line}
