"""Which partition an aggregate's commands and events are on, computed exactly as Kafka's default
partitioner does for the record key (murmur2 of the key bytes, as the Java client and aiokafka's
``DefaultPartitioner``). The writer puts each event on the partition number of its command, so
this is also the events partition, and read-model keys are hash-tagged by it (one Redis Cluster
slot per partition: see ``runledger.readmodel.keys``). Pure: no Kafka client involved.
"""

from __future__ import annotations

from functools import lru_cache

_SEED, _M, _R = 0x9747B28C, 0x5BD1E995, 24
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as an unsigned 32-bit int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length - length % 4
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> _R
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length % 4
    if extra >= 3:
        h ^= data[end + 2] << 16
    if extra >= 2:
        h ^= data[end + 1] << 8
    if extra >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@lru_cache(maxsize=65536)
def partition_for(key: str, partitions: int) -> int:
    """The partition the default partitioner picks for record key ``key.encode()``."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
