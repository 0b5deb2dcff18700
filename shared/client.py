"""A small Python client for the RunLedger REST API (one pooled HTTP connection)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx


class RunLedgerError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


class Client:
    def __init__(self, url: str = "http://127.0.0.1:4200", timeout: float = 60.0) -> None:
        self._http = httpx.Client(base_url=url.rstrip("/") + "/api/v1", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs) -> Any:
        response = self._http.request(method, path, **kwargs)
        body = response.json() if response.content else None
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
