"""A writer partition's book: the aggregates it owns and the commands it has answered.

This is the whole write-side decision procedure, without I/O: the state-transitions service
feeds it commands and persists the envelopes it returns; after a restart it replays the
partition's events through ``replay`` and ends in the same state.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from shared.domain.decisions import Accepted
from shared.domain.flow_run import FlowRun
from shared.domain.registry import Registry
from shared.messages.commands import CommandEnvelope, Rejection
from shared.messages.events import EventEnvelope
from shared.topics import REGISTRY_AGGREGATE

Aggregate = FlowRun | Registry


def new_aggregate(aggregate_id: str) -> Aggregate:
    return Registry() if aggregate_id == REGISTRY_AGGREGATE else FlowRun(id=aggregate_id)


@dataclass(frozen=True)
class Answer:
    """The verdict for one command. ``events`` is empty for rejections and no-op repeats."""

    command_id: str
    events: list[EventEnvelope]
    outcome: dict | None = None
    rejection: Rejection | None = None
    duplicate: bool = False
    # For a duplicate: where the original command's last event landed, if known.
    offset: int | None = None


class Ledger:
    def __init__(self, dedup_window: int = 200_000, new_id: Callable[[], uuid.UUID] = uuid.uuid4) -> None:
        self.aggregates: dict[str, Aggregate] = {}
        self._answered: OrderedDict[str, tuple[dict, int | None]] = OrderedDict()
        self._dedup_window = dedup_window
        self._new_id = new_id

    def aggregate(self, aggregate_id: str) -> Aggregate:
        agg = self.aggregates.get(aggregate_id)
        if agg is None:
            agg = self.aggregates[aggregate_id] = new_aggregate(aggregate_id)
        return agg

    # -- the read side of the log ----------------------------------------------------------
    def replay(self, envelope: EventEnvelope, offset: int | None = None) -> bool:
        """Apply one logged event; returns False for a duplicate (seq already applied)."""
        agg = self.aggregate(envelope.aggregate_id)
        if envelope.seq != agg.seq + 1:
            if envelope.seq <= agg.seq:
                return False
            raise ValueError(f"gap in {envelope.aggregate_id}: seq {envelope.seq} after {agg.seq}")
        agg.apply(envelope.payload)
        agg.seq = envelope.seq
        if envelope.outcome is not None:
            self.remember(envelope.causation_id, envelope.outcome, offset)
        return True

    def offset_of(self, command_id: str) -> int | None:
        entry = self._answered.get(command_id)
        return entry[1] if entry else None

    def remember(self, command_id: str, outcome: dict, offset: int | None) -> None:
        self._answered[command_id] = (outcome, offset)
        self._answered.move_to_end(command_id)
        while len(self._answered) > self._dedup_window:
            self._answered.popitem(last=False)

    # -- the write side ----------------------------------------------------------------------
    def decide(self, command: CommandEnvelope, now: datetime) -> Answer:
        """Decide a command and apply its events in memory; the caller must persist them."""
        previous = self._answered.get(command.command_id)
        if previous is not None:
            return Answer(command.command_id, [], outcome=previous[0], duplicate=True, offset=previous[1])
        # An aggregate is kept only once it has events: a command for an unknown run leaves no trace.
        agg = self.aggregates.get(command.aggregate_id) or new_aggregate(command.aggregate_id)
        decision = agg.handle(command.payload, now)
        if not isinstance(decision, Accepted):
            return Answer(command.command_id, [], rejection=decision.rejection)
        flow_run_id = None if isinstance(agg, Registry) else agg.id
        envelopes = []
        for i, payload in enumerate(decision.events):
            last = i == len(decision.events) - 1
            envelope = EventEnvelope(
                event_id=self._new_id(),
                type=payload.type,
                aggregate_id=command.aggregate_id,
                flow_run_id=flow_run_id,
                seq=agg.seq + 1,
                time=now,
                correlation_id=command.correlation_id,
                causation_id=command.command_id,
                outcome=decision.outcome if last else None,
                payload=payload,
            )
            agg.apply(payload)
            agg.seq = envelope.seq
            envelopes.append(envelope)
        if envelopes:
            self.aggregates[command.aggregate_id] = agg
            # a repeat of this command id, even within the same batch, is a duplicate
            self.remember(command.command_id, decision.outcome, None)
        return Answer(command.command_id, envelopes, outcome=decision.outcome)
