"""A writer partition's book: the aggregates it owns and the verdicts it has given.

This is the whole write-side decision procedure, without I/O: the state-transitions service
feeds it commands and persists the envelopes it returns; after a restart it replays the
partition's events through ``replay`` and ends in the same state, verdicts included, so a
redelivered command gets the answer its caller already has.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import orjson

from runledger.domain.aggregate_store import AggregateStore, new_aggregate
from runledger.domain.decisions import Accepted
from runledger.domain.flow_run import FlowRun
from runledger.messages.commands import CommandEnvelope, Rejection
from runledger.messages.events import EventEnvelope, VerdictRecorded


@dataclass(frozen=True)
class Verdict:
    outcome: dict | None = None
    rejection: Rejection | None = None


@dataclass(frozen=True)
class Answer:
    """The verdict for one command and the events that record it (none for a repeat)."""

    command_id: str
    events: list[EventEnvelope]
    outcome: dict | None = None
    rejection: Rejection | None = None
    duplicate: bool = False


def encode_verdict(verdict: Verdict) -> bytes:
    """A verdict as the ledger keeps it: compact JSON (``[outcome, rejection]``)."""
    rejection = None if verdict.rejection is None else verdict.rejection.model_dump(mode="json")
    # A right-sized copy: orjson's own bytes keep its ~4 KiB working buffer (measured: 200k
    # verdicts kept as orjson output held 820 MB of RSS, copied 70 MB).
    return memoryview(orjson.dumps([verdict.outcome, rejection])).tobytes()


def decode_verdict(raw: bytes) -> Verdict:
    outcome, rejection = orjson.loads(raw)
    return Verdict(outcome, None if rejection is None else Rejection.model_validate(rejection))


class Ledger:
    def __init__(
        self, dedup_window: int = 200_000, new_id: Callable[[], uuid.UUID] = uuid.uuid4, max_hot: int | None = None
    ) -> None:
        # Every change goes through ``self.aggregates[id] = agg``: the store re-encodes what changed.
        self.aggregates = AggregateStore(max_hot=max_hot)
        # command id -> its verdict, encoded (a redelivery is rare; bytes are a fifth of the memory)
        self._verdicts: OrderedDict[str, bytes] = OrderedDict()
        self._dedup_window = dedup_window
        self._new_id = new_id

    @classmethod
    def restore(
        cls,
        aggregates: AggregateStore,
        verdicts: list[tuple[str, bytes]],
        dedup_window: int = 200_000,
        new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    ) -> "Ledger":
        """A ledger rebuilt from a snapshot: its aggregates and its encoded verdicts, oldest first."""
        ledger = cls(dedup_window, new_id)
        ledger.aggregates = aggregates
        ledger._verdicts = OrderedDict(verdicts[-dedup_window:] if len(verdicts) > dedup_window else verdicts)
        return ledger

    @property
    def dedup_window(self) -> int:
        return self._dedup_window

    def verdicts(self) -> list[tuple[str, bytes]]:
        """The remembered verdicts, encoded, oldest first (what a snapshot keeps)."""
        return list(self._verdicts.items())

    def verdict(self, command_id: str) -> Verdict | None:
        raw = self._verdicts.get(command_id)
        return None if raw is None else decode_verdict(raw)

    # -- the read side of the log ----------------------------------------------------------
    def replay(self, envelope: EventEnvelope) -> bool:
        """Apply one logged event; returns False for a duplicate record (seq already applied)."""
        agg = self.aggregates.get(envelope.aggregate_id) or new_aggregate(envelope.aggregate_id)
        if envelope.seq != agg.seq + 1:
            if envelope.seq <= agg.seq:
                return False
            raise ValueError(f"gap in {envelope.aggregate_id}: seq {envelope.seq} after {agg.seq}")
        agg.apply(envelope.payload)
        agg.seq = envelope.seq
        self.aggregates[envelope.aggregate_id] = agg
        if isinstance(envelope.payload, VerdictRecorded):
            self._remember(envelope.causation_id, Verdict(envelope.payload.outcome, envelope.payload.rejection))
        elif envelope.outcome is not None:
            self._remember(envelope.causation_id, Verdict(outcome=envelope.outcome))
        return True

    def _remember(self, command_id: str, verdict: Verdict) -> None:
        self._verdicts[command_id] = encode_verdict(verdict)
        self._verdicts.move_to_end(command_id)
        while len(self._verdicts) > self._dedup_window:
            self._verdicts.popitem(last=False)

    # -- the write side ----------------------------------------------------------------------
    def decide(self, command: CommandEnvelope, now: datetime) -> Answer:
        """Decide a command and apply its events in memory; the caller must persist them."""
        previous = self.verdict(command.command_id)
        if previous is not None:
            return Answer(command.command_id, [], previous.outcome, previous.rejection, duplicate=True)
        # An aggregate is kept only once it has events: a command for an unknown run leaves no trace.
        agg = self.aggregates.get(command.aggregate_id) or new_aggregate(command.aggregate_id)
        decision = agg.handle(command.payload, now)
        if isinstance(decision, Accepted):
            verdict = Verdict(outcome=decision.outcome)
            payloads = decision.events
            if not payloads and decision.record_verdict:
                payloads = [VerdictRecorded(command_type=command.type, outcome=decision.outcome)]
        elif agg.seq > 0:  # refused by an existing aggregate: record the verdict
            verdict = Verdict(rejection=decision.rejection)
            payloads = [VerdictRecorded(command_type=command.type, rejection=decision.rejection)]
        else:
            return Answer(command.command_id, [], rejection=decision.rejection)
        flow_run_id = agg.id if isinstance(agg, FlowRun) else None
        envelopes = []
        for i, payload in enumerate(payloads):
            last = i == len(payloads) - 1
            envelope = EventEnvelope(
                event_id=self._new_id(),
                type=payload.type,
                aggregate_id=command.aggregate_id,
                flow_run_id=flow_run_id,
                seq=agg.seq + 1,
                time=now,
                correlation_id=command.correlation_id,
                causation_id=command.command_id,
                outcome=verdict.outcome if last and not isinstance(payload, VerdictRecorded) else None,
                payload=payload,
            )
            agg.apply(payload)
            agg.seq = envelope.seq
            envelopes.append(envelope)
        if envelopes:
            self.aggregates[command.aggregate_id] = agg
            self._remember(command.command_id, verdict)  # a repeat, even in the same batch, is a duplicate
        return Answer(command.command_id, envelopes, verdict.outcome, verdict.rejection)
