"""The agents aggregate: every registered agent, as one aggregate (``AGENTS_AGGREGATE``) decided
by the single writer.

One aggregate for all agents: an agent registers when it starts (not on every poll), so the rate
is tiny and one writer partition is no hot key; the read side keeps them in one Redis hash
(listing agents and ``why`` read it whole). What changes on every poll -- an agent's last contact
(``last_queried``, the ``X-PREFECT-AGENT-ID`` header) -- is NOT here: it is liveness, like
heartbeats, kept in Redis only (see ``runledger.services.runtime.scheduling_store``).

The agent's id is derived from its type, name, sorted labels and tenant (``agent_id_for``), so
an agent that registers again gets its id back; registering again with nothing new changes
nothing, with a new ``core_version`` or ``agent_config_id`` updates them (``created`` stays).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from runledger.domain.decisions import Accepted, Decision
from runledger.domain.scheduling import agent_id_for
from runledger.messages import commands as c
from runledger.messages import events as e

AGENTS_AGGREGATE = "agents"


@dataclass
class Agent:
    id: str
    agent_type: str
    name: str | None
    labels: list[str]
    tenant_id: str | None
    agent_config_id: str | None
    core_version: str | None
    created: datetime

    def details(self) -> tuple:
        return (self.agent_type, self.name, self.labels, self.tenant_id, self.agent_config_id, self.core_version)


@dataclass
class Agents:
    seq: int = 0
    agents: dict[str, Agent] = field(default_factory=dict)

    def apply(self, event: object) -> None:
        match event:
            case e.AgentRegistered():
                self.agents[event.agent_id] = Agent(
                    event.agent_id,
                    event.agent_type,
                    event.name,
                    list(event.labels),
                    event.tenant_id,
                    event.agent_config_id,
                    event.core_version,
                    event.created,
                )
            case e.VerdictRecorded():
                pass
            case _:
                raise TypeError(f"not an agents event: {event!r}")

    def handle(self, command: object, now: datetime) -> Decision:
        match command:
            case c.RegisterAgent():
                labels = sorted(set(command.labels))
                agent_id = agent_id_for(command.agent_type, command.name, labels, command.tenant_id)
                existing = self.agents.get(agent_id)
                details = (command.agent_type, command.name, labels, command.tenant_id, command.agent_config_id, command.core_version)
                if existing is not None and existing.details() == details:
                    return Accepted([], {"agent_id": agent_id, "created": False})
                event = e.AgentRegistered(
                    agent_id=agent_id,
                    agent_type=command.agent_type,
                    name=command.name,
                    labels=labels,
                    tenant_id=command.tenant_id,
                    agent_config_id=command.agent_config_id,
                    core_version=command.core_version,
                    created=existing.created if existing is not None else now,
                )
                return Accepted([event], {"agent_id": agent_id, "created": existing is None})
        raise TypeError(f"not an agents command: {command!r}")
