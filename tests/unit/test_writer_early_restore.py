"""The writer restores its snapshots while it joins the consumer group; an assignment of no
partitions (more writers than partitions) must not keep those books alive."""

from __future__ import annotations

import asyncio

from runledger.services.transitions.service import TransitionsService
from runledger.settings import Settings


async def test_an_empty_first_assignment_drops_the_early_restore():
    service = TransitionsService(Settings(kafka_bootstrap="127.0.0.1:1", embedded_broker=True))
    early = asyncio.create_task(asyncio.sleep(3600, result={0: object()}))
    service.early = early
    await service.catch_up([])
    assert service.early is None and service.books == {}
    await asyncio.gather(early, return_exceptions=True)
    assert early.cancelled()
