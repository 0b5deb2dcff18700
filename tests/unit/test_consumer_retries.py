"""What a consumer does with a batch whose handling met a dependency outage (no broker needed:
``_handle_riding_out_outages`` only calls ``handle``)."""

from __future__ import annotations

import pytest

from runledger.services.runtime.consumer import ConsumerService
from runledger.services.transitions.service import TransitionsService
from runledger.settings import Settings
from runledger.topics import PROJECTOR


class Flaky(ConsumerService):
    group = PROJECTOR

    def __init__(self, failures: int) -> None:
        super().__init__(Settings())
        self.failures, self.calls = failures, 0

    async def handle(self, batch: dict) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("Redis went away")


async def test_a_batch_is_handled_again_until_the_dependency_is_back():
    service = Flaky(failures=2)
    await service._handle_riding_out_outages({"batch": 1})
    assert service.calls == 3 and service.dependency_error is None


async def test_the_writer_never_handles_a_batch_twice_in_one_process():
    class FlakyWriter(Flaky):
        retries_batches = TransitionsService.retries_batches

    service = FlakyWriter(failures=1)
    with pytest.raises(ConnectionError):
        await service._handle_riding_out_outages({"batch": 1})
    assert service.calls == 1
