"""Prefect 1.x serialized flows (``Flow.serialize()``) as RunLedger flow definitions. Pure.

``prefect register`` sends ``create_flow_from_compressed_string`` with ``serialized_flow`` =
base64(gzip(json(flow.serialize()))), tasks and edges inside. As Prefect Server does, the server
assigns task ids (a serialized task carries only its ``slug``; edges name their tasks by slug), and
a task is ``mapped`` when an edge into it is. The whole serialized flow is kept too: the client
reads it back (``FlowView.serialized_flow``).
"""

from __future__ import annotations

import base64
import binascii
import uuid
import zlib
from typing import Any

import orjson
from pydantic import ValidationError

from runledger.messages.models import EdgeSpec, FlowDefinition, ParameterSpec, TaskSpec

TASK_NAMESPACE = uuid.UUID("0b8d6c55-2f0a-4c3e-9d1b-6a3f5e2c7d90")


class SerializedFlowError(ValueError):
    """A serialized flow we cannot register; the message names what is wrong."""


def task_id_for(flow_id: str, slug: str) -> str:
    """The id of the task ``slug`` in flow ``flow_id`` (deterministic: a retried registration of
    the same flow id gets the same task ids)."""
    return str(uuid.uuid5(TASK_NAMESPACE, f"{flow_id}/{slug}"))


def decompress(text: str, max_bytes: int) -> dict[str, Any]:
    """Undo Prefect's ``compress`` (base64 of gzip of JSON), refusing more than ``max_bytes`` of
    JSON (checked while inflating, so a small bomb cannot blow up in memory)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SerializedFlowError("serialized_flow: not base64") from None
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing
    try:
        data = inflater.decompress(raw, max_bytes + 1)
    except zlib.error as exc:
        raise SerializedFlowError(f"serialized_flow: not gzip data ({exc})") from None
    if len(data) > max_bytes or inflater.unconsumed_tail:
        raise SerializedFlowError(f"serialized_flow: more than {max_bytes} bytes of JSON once decompressed")
    if not inflater.eof:
        raise SerializedFlowError("serialized_flow: truncated gzip data")
    try:
        flow = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SerializedFlowError(f"serialized_flow: not JSON ({exc})") from None
    if not isinstance(flow, dict):
        raise SerializedFlowError("serialized_flow: expected a JSON object")
    return flow


def _slug(value: Any, where: str) -> str:
    slug = value.get("slug") if isinstance(value, dict) else value
    if not isinstance(slug, str) or not slug:
        raise SerializedFlowError(f"{where}: a task is named by its slug")
    return slug


def _trigger(value: Any) -> str | None:
    return value.get("fn") if isinstance(value, dict) else value


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def _build(model, where: str, **fields: Any):
    """``model(**fields)``, its validation errors named by where they are in the serialized flow."""
    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join([where, *map(str, first["loc"])])
        raise SerializedFlowError(f"{loc}: {first['msg']}") from None


def flow_definition(
    serialized: dict[str, Any],
    *,
    flow_id: str,
    project_id: str,
    version_group_id: str,
    idempotency_key: str | None = None,
    description: str | None = None,
) -> FlowDefinition:
    """The definition a serialized flow registers (``version`` 0: the writer decides it)."""
    name = serialized.get("name")
    if not isinstance(name, str) or not name:
        raise SerializedFlowError("serialized_flow.name: a flow needs a name")
    tasks_in = serialized.get("tasks") or []
    edges_in = serialized.get("edges") or []
    if not isinstance(tasks_in, list) or not isinstance(edges_in, list):
        raise SerializedFlowError("serialized_flow: tasks and edges must be lists")
    edges = []
    for i, edge in enumerate(edges_in):
        if not isinstance(edge, dict):
            raise SerializedFlowError(f"serialized_flow.edges.{i}: expected an object")
        edges.append((_slug(edge.get("upstream_task"), f"serialized_flow.edges.{i}.upstream_task"),
                      _slug(edge.get("downstream_task"), f"serialized_flow.edges.{i}.downstream_task"), edge))
    mapped = {down for _, down, edge in edges if edge.get("mapped")}
    ids: dict[str, str] = {}
    try:
        tasks = []
        for i, task in enumerate(tasks_in):
            if not isinstance(task, dict):
                raise SerializedFlowError(f"serialized_flow.tasks.{i}: expected an object")
            slug = _slug(task, f"serialized_flow.tasks.{i}")
            if slug in ids:
                raise SerializedFlowError(f"serialized_flow.tasks: duplicate slug {slug!r}")
            ids[slug] = task_id_for(flow_id, slug)
            tasks.append(
                _build(
                    TaskSpec,
                    f"serialized_flow.tasks.{i}",
                    id=ids[slug],
                    slug=slug,
                    name=task.get("name") or "",
                    tags=sorted(task.get("tags") or []),
                    max_retries=task.get("max_retries") or 0,
                    retry_delay_seconds=_seconds(task.get("retry_delay")),
                    mapped=slug in mapped,
                    trigger=_trigger(task.get("trigger")),
                    type=task.get("type"),
                )
            )
        for up, down, _ in edges:
            for slug in (up, down):
                if slug not in ids:
                    raise SerializedFlowError(f"serialized_flow.edges: unknown task slug {slug!r}")
        parameters = [
            _build(ParameterSpec, f"serialized_flow.parameters.{i}", name=p.get("name") or p.get("slug"), default=p.get("default"),
                   required=bool(p.get("required")))
            for i, p in enumerate(serialized.get("parameters") or [])
        ]
        definition = _build(
            FlowDefinition,
            "serialized_flow",
            id=flow_id,
            name=name,
            project_id=project_id,
            version=0,
            version_group_id=version_group_id,
            description=description,
            parameters=parameters,
            run_config=serialized.get("run_config"),
            storage=serialized.get("storage"),
            schedule=serialized.get("schedule"),
            core_version=serialized.get("__version__"),
            tasks=tasks,
            edges=[
                EdgeSpec(upstream_task_id=ids[up], downstream_task_id=ids[down], key=edge.get("key"), mapped=bool(edge.get("mapped")))
                for up, down, edge in edges
            ],
            idempotency_key=idempotency_key,
            serialized_flow=serialized,
            environment=serialized.get("environment"),
        )
    except SerializedFlowError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:  # a value of the wrong shape
        raise SerializedFlowError(f"serialized_flow: {exc}") from None
    names = [p.name for p in definition.parameters]
    if len(set(names)) != len(names):
        raise SerializedFlowError("serialized_flow.parameters: duplicate names")
    return definition
