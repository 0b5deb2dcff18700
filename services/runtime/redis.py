"""The one place Redis clients are made: a single ``Redis``, or a ``RedisCluster`` when
``RUNLEDGER_REDIS_CLUSTER=true`` (the URL then names any node of the cluster; the client discovers
the rest). Everything RunLedger sends is cluster-safe: each multi-key command, Lua script and
transaction touches one hash slot (read-model keys are hash-tagged by events partition, see
``runledger.readmodel.keys``); reads across partitions go through ``mget`` below, which splits by
slot on a cluster.
"""

from __future__ import annotations

from typing import Any

import redis as redis_sync
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, MasterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runledger.settings import Settings

AsyncRedis = aioredis.Redis | RedisCluster

# Redis is down, restarting, failing over, out of connections, read-only (a replica, mid-failover)
# or full (maxmemory with noeviction): wait and retry, never crash, and never take it for a bad
# record (the last three are ResponseErrors, as a script's error about one record is).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError, ReadOnlyError, OutOfMemoryError, MasterDownError,
)


def is_cluster(client: Any) -> bool:
    return isinstance(client, (RedisCluster, redis_sync.RedisCluster))


def client(settings: Settings, **options: Any) -> AsyncRedis:
    """An asyncio client for ``settings.redis_url`` (``max_connections`` etc. in ``options``)."""
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **options)
    return aioredis.from_url(settings.redis_url, **options)


def sync_client(url: str, cluster: bool = False, **options: Any):
    """A blocking client (dev-stack housekeeping, tests)."""
    if cluster:
        return redis_sync.RedisCluster.from_url(url, **options)
    return redis_sync.Redis.from_url(url, **options)


async def mget(client: AsyncRedis, keys: list[str]) -> list[bytes | None]:
    """Values of ``keys`` in order, whatever slots they are in (one round trip on a single Redis,
    one per node on a cluster)."""
    if not keys:
        return []
    if isinstance(client, RedisCluster):
        return await client.mget_nonatomic(keys)
    return await client.mget(keys)


async def drop(client: AsyncRedis, pattern: str, batch: int = 1000) -> int:
    """Unlink every key matching ``pattern`` (on every primary of a cluster); returns how many."""
    dropped = 0
    if isinstance(client, RedisCluster):
        keys = [key async for key in client.scan_iter(match=pattern, count=batch)]  # every primary
        for i in range(0, len(keys), batch):  # one page spans many slots: one UNLINK per key, pipelined
            async with client.pipeline(transaction=False) as pipe:
                for key in keys[i : i + batch]:
                    pipe.unlink(key)
                dropped += sum(await pipe.execute())
        return dropped
    chunk: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=batch):
        chunk.append(key)
        if len(chunk) >= batch:
            dropped += await client.unlink(*chunk)
            chunk = []
    if chunk:
        dropped += await client.unlink(*chunk)
    return dropped


async def count(client: AsyncRedis, pattern: str) -> int:
    return len([key async for key in client.scan_iter(match=pattern, count=1000)])
