"""Our partition function agrees with the Kafka client's default partitioner."""

from __future__ import annotations

import random
import uuid

from aiokafka.partitioner import DefaultPartitioner, murmur2 as aiokafka_murmur2

from runledger.partitioning import murmur2, partition_for
from runledger.topics import REGISTRY_AGGREGATE


def keys(n: int = 3000) -> list[str]:
    rng = random.Random(7)
    out = [REGISTRY_AGGREGATE, "", "a", "ab", "abc", "abcd", "abcde", "é", "run-1", "registry\x00"]
    out += [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(n)]
    out += ["".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(0, 40))) for _ in range(n)]
    return out


def test_murmur2_matches_aiokafka():
    for key in keys():
        assert murmur2(key.encode()) == aiokafka_murmur2(key.encode()), key


def test_partition_matches_the_default_partitioner():
    partitioner = DefaultPartitioner()
    for partitions in (1, 2, 3, 4, 8, 12, 16):
        every = list(range(partitions))
        for key in keys(500):
            assert partition_for(key, partitions) == partitioner(key.encode(), every, every), (key, partitions)
