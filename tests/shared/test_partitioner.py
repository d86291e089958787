"""The publisher's murmur2 partitioner: the partition Kafka's Java client would pick for a key (records keyed by entity
id must land where every other Kafka client puts them)."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from shared.kafka.producer import murmur2, murmur2_python, partition_for


# Partitions of 1000 the Java client's DefaultPartitioner gives (org.apache.kafka.clients.producer.Partitioner),
# as kafka-python's test_murmur2_java_compatibility records them.
@pytest.mark.parametrize(
    ("key", "partition"),
    [(b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742)],
)
def test_partition_is_the_java_clients(key: bytes, partition: int):
    assert partition_for(key, 1000) == partition
    assert (murmur2_python(key) & 0x7FFFFFFF) % 1000 == partition


def test_murmur2_equals_aiokafkas_on_random_keys_of_every_length():
    rnd = random.Random(42)
    for _ in range(20_000):
        key = rnd.randbytes(rnd.randrange(0, 300))  # every tail length, and past the pre-built word unpackers
        assert murmur2(key) == aiokafka_murmur2(key), key
        assert murmur2_python(key) == aiokafka_murmur2(key), key


def test_the_c_extension_is_what_publishers_use():
    # the pure-Python fallback costs ~17 times the CPU per record; the wheel is a dependency for that reason
    assert murmur2 is not murmur2_python
