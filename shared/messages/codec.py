"""orjson (de)serialization of envelopes: the only wire format on the topics."""

from __future__ import annotations

import orjson
from pydantic import BaseModel

from runledger.messages.commands import CommandEnvelope, Reply
from runledger.messages.events import EventEnvelope


def encode(message: BaseModel) -> bytes:
    return orjson.dumps(message.model_dump(mode="python", exclude_none=False))


def decode_event(raw: bytes) -> EventEnvelope:
    return EventEnvelope.model_validate(orjson.loads(raw))


def decode_command(raw: bytes) -> CommandEnvelope:
    return CommandEnvelope.model_validate(orjson.loads(raw))


def decode_reply(raw: bytes) -> Reply:
    return Reply.model_validate(orjson.loads(raw))
