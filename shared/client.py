"""A small Python client for the RunLedger REST API (one pooled HTTP connection)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

WATCH_READ_TIMEOUT_SECONDS = 45.0  # three of the server's keep-alive intervals
TRANSIENT_STATUSES = (502, 503, 504)  # a watch retries these like a dropped connection


class RunLedgerError(Exception):
    """An API answer that is an error; ``str()`` is one line: the message and the field."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {describe(body)}")
        self.status, self.body = status, body


class Unreachable(RunLedgerError):
    """No answer from the API at all (nothing listens, DNS, timeout)."""

    def __init__(self, url: str, cause: Exception) -> None:
        reason = str(cause).strip() or type(cause).__name__
        Exception.__init__(
            self, f"cannot reach the RunLedger API at {url} ({reason}); start it (runledger dev) or point --url / RUNLEDGER_URL at it"
        )
        self.status, self.body, self.url = 0, None, url


class _Transient(Exception):
    def __init__(self, error: RunLedgerError) -> None:
        super().__init__(str(error))
        self.error = error


def _loc(loc: Any) -> str:
    parts = [str(p) for p in (loc or []) if p not in ("body", "query", "path")]
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def describe(body: Any) -> str:
    """An error body as one line: ``field: message`` for each problem, the code when there is one."""
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, list):
            parts = []
            for item in detail:
                if isinstance(item, dict):
                    where = _loc(item.get("loc"))
                    parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
                else:
                    parts.append(str(item))
            text = "; ".join(parts)
            if "accepted" in body:
                text = f"{body['accepted']} stored, {body.get('refused', 0)} refused: {text}"
            return text
        if isinstance(detail, str):
            text = f"{body['code']}: {detail}" if body.get("code") else detail
            if body.get("field"):
                text += f" (field: {body['field']})"
            return text
    return str(body)


class Client:
    def __init__(self, url: str = "http://127.0.0.1:4200", timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url + "/api/v1", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, path: str, **params) -> Any:
        """GET ``/api/v1<path>`` (parameters that are None are left out): the JSON answer, or
        ``RunLedgerError`` (``Unreachable`` when nothing answers), one line as ``str()``."""
        return self._call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(self.url, exc) from None
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise RunLedgerError(response.status_code, body)
        return body

    def create_project(self, name: str, description: str | None = None) -> dict:
        return self._call("POST", "/projects", json={"name": name, "description": description})

    def register_flow(self, **flow: Any) -> dict:
        return self._call("POST", "/flows", json=flow)

    def create_flow_run(
        self,
        flow_id: str | None = None,
        *,
        version_group_id: str | None = None,
        flow_name: str | None = None,
        project_name: str | None = None,
        parameters: dict | None = None,
        context: dict | None = None,
        labels: list[str] | None = None,
        run_config: dict | None = None,
        flow_run_name: str | None = None,
        scheduled_start_time: datetime | str | None = None,
        idempotency_key: str | None = None,
    ) -> dict:
        if isinstance(scheduled_start_time, datetime):
            scheduled_start_time = scheduled_start_time.isoformat()
        body = {
            "flow_id": flow_id,
            "version_group_id": version_group_id,
            "flow_name": flow_name,
            "project_name": project_name,
            "parameters": parameters,
            "context": context,
            "labels": labels,
            "run_config": run_config,
            "flow_run_name": flow_run_name,
            "scheduled_start_time": scheduled_start_time,
            "idempotency_key": idempotency_key,
        }
        return self._call("POST", "/flow_runs", json={k: v for k, v in body.items() if v is not None})

    def get_flow_run(self, flow_run_id: str) -> dict:
        return self._call("GET", f"/flow_runs/{flow_run_id}")

    def set_flow_run_state(self, flow_run_id: str, state: str, version: int | None = None, message: str | None = None) -> dict:
        return self._call("POST", f"/flow_runs/{flow_run_id}/state", json={"state": {"type": state, "message": message}, "version": version})

    def cancel_flow_run(self, flow_run_id: str) -> dict:
        return self._call("POST", f"/flow_runs/{flow_run_id}/cancel")

    def get_task_runs(self, flow_run_id: str) -> list[dict]:
        return self._call("GET", f"/flow_runs/{flow_run_id}/task_runs")

    def set_task_run_state(self, task_run_id: str, state: str, version: int | None = None, message: str | None = None) -> dict:
        return self._call("POST", f"/task_runs/{task_run_id}/state", json={"state": {"type": state, "message": message}, "version": version})

    # -- logs -----------------------------------------------------------------------------------
    def write_logs(self, records: list[dict]) -> dict:
        """Write log records (``flow_run_id``, ``message``, optional ``task_run_id``, ``timestamp``,
        ``level``, ``name``, ``info``). Some refused: ``RunLedgerError`` (422) whose body says which
        and how many were stored."""
        return self._call("POST", "/logs", json={"logs": records})

    def get_logs(self, flow_run_id: str, **params: Any) -> dict:
        """One page: ``{"logs": [...], "next_cursor": ...}`` (params: ``task_run_id``, ``level``,
        ``min_level``, ``after``, ``since``, ``before``, ``until``, ``order``, ``limit``, ``cursor``)."""
        return self._call("GET", f"/flow_runs/{flow_run_id}/logs", params={k: v for k, v in params.items() if v is not None})

    def why_scheduled(self, flow_run_id: str) -> dict | None:
        """The scheduling service's diagnosis of a run still Scheduled, or None where none answers."""
        try:
            return self._call("GET", f"/flow_runs/{flow_run_id}/why")
        except RunLedgerError as exc:
            if isinstance(exc, Unreachable):
                raise
            return None

    def watch(self, flow_run_id: str, last_event_id: str | None = None, give_up_seconds: float = 60.0):
        """Yield ``(event, id, data)`` from the run's watch stream until it ends; reconnects with
        ``Last-Event-ID`` when the connection drops, so nothing is missed or repeated.

        The stream has ended when the server closes it after an ``end`` that follows a finished
        state. An ``end`` followed by a state (a run restarted after it failed: Failed, end,
        Scheduled, ..., Success, end) is not the end: the server decides, the client follows.
        The read times out after ``WATCH_READ_TIMEOUT_SECONDS`` without a byte (the server
        sends a keep-alive every 15 s): a connection that died without a word is reconnected.
        A 502/503/504 (a restarting ingress, Redis being restored) is retried like a dropped
        connection; ``Unreachable`` after ``give_up_seconds`` without a connection that works."""
        import time

        import orjson

        from runledger.domain.states import is_finished_name

        attempts = 0
        alive_at = time.monotonic()  # when the stream last showed it works
        last_state: str | None = None
        while True:
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
            try:
                timeout = httpx.Timeout(30.0, read=WATCH_READ_TIMEOUT_SECONDS)
                with self._http.stream("GET", f"/flow_runs/{flow_run_id}/watch", headers=headers, timeout=timeout) as response:
                    if response.status_code >= 400:
                        response.read()
                        try:
                            body = response.json()
                        except ValueError:
                            body = response.text
                        error = RunLedgerError(response.status_code, body)
                        if response.status_code not in TRANSIENT_STATUSES:
                            raise error
                        raise _Transient(error)
                    event: dict[str, str] = {}
                    ended = False
                    for line in response.iter_lines():
                        alive_at, attempts = time.monotonic(), 0
                        if line.startswith(":"):  # a keep-alive
                            continue
                        if line:
                            name, _, value = line.partition(":")
                            event[name] = value[1:] if value.startswith(" ") else value
                            continue
                        if not event:
                            continue
                        last_event_id = event.get("id", last_event_id)
                        kind = event.get("event", "message")
                        data = orjson.loads(event.get("data") or "null")
                        if kind == "state" and isinstance(data, dict):
                            last_state = data.get("type")
                        ended = kind == "end" or (ended and kind != "state")
                        yield kind, event.get("id"), data
                        event = {}
                    if ended and is_finished_name(last_state):
                        return
                cause: Exception = ConnectionError("the watch stream closed before the run finished")
            except (httpx.TransportError, httpx.StreamError) as exc:
                cause = exc
            except _Transient as exc:
                cause = exc.error
            if time.monotonic() - alive_at > give_up_seconds:
                raise Unreachable(self.url, cause)
            attempts += 1  # dropped (or the ingress restarted): resume after the last event seen
            time.sleep(min(0.2 * 2**attempts, 5))
