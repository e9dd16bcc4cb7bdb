"""Which partition a record goes to: the same function on the client and on the node.

A keyed record goes to `xxh3_64(key) % partitions`, so every record with one key lands in one partition
and keeps its order there. The node's JSON produce path imports `partition_for_key` from here, so a
record keeps its partition whichever path produced it.

A record without a key goes to the topic's "sticky" partition: all keyless records fill one batch, and
the sticky partition moves on (round robin) only when that batch is closed. This is Kafka's sticky
partitioner (KIP-480): fewer, fuller batches than spreading every record, and an even spread over time.
"""

from __future__ import annotations

import random

import xxhash

_xxh3 = xxhash.xxh3_64_intdigest


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition of a keyed record: xxh3_64 of the key bytes modulo the partition count."""
    if partitions <= 0:
        raise ValueError(f"a topic has at least one partition, got {partitions}")
    return _xxh3(key) % partitions


class StickyPartitioner:
    """Chooses the partition of keyless records per topic; moves on when the batch there closes.

    Not thread-safe: it belongs to one producer, which uses it from its event loop.
    """

    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.Random()
        self._sticky: dict[str, int] = {}

    def partition(self, topic: str, partitions: int) -> int:
        current = self._sticky.get(topic)
        if current is None or current >= partitions:
            current = self._rng.randrange(partitions)
            self._sticky[topic] = current
        return current

    def maybe_rotate(self, topic: str, closed_partition: int, partitions: int) -> None:
        """A batch of `topic` closed on `closed_partition`: if it was the sticky one, take the next."""
        if self._sticky.get(topic) == closed_partition:
            self._sticky[topic] = (closed_partition + 1) % partitions
