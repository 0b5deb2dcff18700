"""Prefect 1.x serialized flows (``Flow.serialize()``) as RunLedger flow definitions. Pure.

``prefect register`` sends ``create_flow_from_compressed_string`` with ``serialized_flow`` =
base64(gzip(json(flow.serialize()))), tasks and edges inside. As Prefect Server does, the server
assigns task ids (a serialized task carries only its ``slug``; edges name their tasks by slug), and
a task is ``mapped`` when an edge into it is. The whole serialized flow is kept too: the client
reads it back (``FlowView.serialized_flow``).

``Client.register()`` (``flow.register()``) takes ``tasks`` and ``edges`` out of the serialized
flow and sends them afterwards (``register_tasks`` / ``register_edges``, in batches of 500):
``serialized_tasks`` / ``serialized_edges`` parse those batches the same way.
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


def _edges(edges_in: Any, where: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(upstream slug, downstream slug, the serialized edge) for each edge."""
    if not isinstance(edges_in, list):
        raise SerializedFlowError(f"{where}: expected a list of edges")
    edges = []
    for i, edge in enumerate(edges_in):
        if not isinstance(edge, dict):
            raise SerializedFlowError(f"{where}.{i}: expected an object")
        edges.append((_slug(edge.get("upstream_task"), f"{where}.{i}.upstream_task"),
                      _slug(edge.get("downstream_task"), f"{where}.{i}.downstream_task"), edge))
    return edges


def _tasks(tasks_in: Any, flow_id: str, mapped: set[str], where: str) -> list[TaskSpec]:
    """The task specs of serialized tasks, their ids derived from ``flow_id`` and their slugs."""
    if not isinstance(tasks_in, list):
        raise SerializedFlowError(f"{where}: expected a list of tasks")
    seen: set[str] = set()
    tasks = []
    try:
        for i, task in enumerate(tasks_in):
            if not isinstance(task, dict):
                raise SerializedFlowError(f"{where}.{i}: expected an object")
            slug = _slug(task, f"{where}.{i}")
            if slug in seen:
                raise SerializedFlowError(f"{where}: duplicate slug {slug!r}")
            seen.add(slug)
            tasks.append(
                _build(
                    TaskSpec,
                    f"{where}.{i}",
                    id=task_id_for(flow_id, slug),
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
    except SerializedFlowError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:  # a value of the wrong shape
        raise SerializedFlowError(f"{where}: {exc}") from None
    return tasks


def _edge_spec(flow_id: str, up: str, down: str, edge: dict[str, Any], where: str) -> EdgeSpec:
    key = edge.get("key")
    if key is not None and not isinstance(key, str):
        raise SerializedFlowError(f"{where}.key: must be a string")
    return EdgeSpec(upstream_task_id=task_id_for(flow_id, up), downstream_task_id=task_id_for(flow_id, down), key=key,
                    mapped=bool(edge.get("mapped")))


def serialized_tasks(value: Any, flow_id: str) -> list[TaskSpec]:
    """``register_tasks``'s ``serialized_tasks`` (``Client.register()`` sends the flow's tasks in
    batches after the flow itself) as task specs of flow ``flow_id``. ``mapped`` is left false:
    it follows from the edges, which come after the tasks."""
    return _tasks(value, flow_id, set(), "serialized_tasks")


def serialized_edges(value: Any, flow_id: str) -> list[tuple[str, str, EdgeSpec]]:
    """``register_edges``'s ``serialized_edges`` as (upstream slug, downstream slug, edge spec)."""
    return [(up, down, _edge_spec(flow_id, up, down, edge, f"serialized_edges.{i}"))
            for i, (up, down, edge) in enumerate(_edges(value, "serialized_edges"))]


def flow_definition(
    serialized: dict[str, Any],
    *,
    flow_id: str,
    project_id: str,
    version_group_id: str,
    idempotency_key: str | None = None,
    description: str | None = None,
) -> FlowDefinition:
    """The definition a serialized flow registers (``version`` 0: the writer decides it). Without
    ``tasks`` (``Client.register()`` sends them later) it has no tasks and no edges yet."""
    name = serialized.get("name")
    if not isinstance(name, str) or not name:
        raise SerializedFlowError("serialized_flow.name: a flow needs a name")
    edges = _edges(serialized.get("edges") or [], "serialized_flow.edges")
    mapped = {down for _, down, edge in edges if edge.get("mapped")}
    tasks = _tasks(serialized.get("tasks") or [], flow_id, mapped, "serialized_flow.tasks")
    slugs = {t.slug for t in tasks}
    for up, down, _ in edges:
        for slug in (up, down):
            if slug not in slugs:
                raise SerializedFlowError(f"serialized_flow.edges: unknown task slug {slug!r}")
    try:
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
            edges=[_edge_spec(flow_id, up, down, edge, f"serialized_flow.edges.{i}") for i, (up, down, edge) in enumerate(edges)],
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
