"""Raftka's public face: the Python client library and the `raftka` command line.

    from raftka import Producer, Consumer, Admin            # asyncio
    from raftka import SyncProducer, SyncConsumer, SyncAdmin  # blocking, a loop in a background thread

See docs/client.md for the client and docs/cli.md for the command line.
"""

from raftka.client import (
    Admin,
    BrokerDescription,
    BytesDeserializer,
    BytesSerializer,
    ClusterDescription,
    Consumer,
    ConsumerBatch,
    ConsumerRecord,
    Deserializer,
    JsonDeserializer,
    JsonSerializer,
    PartitionDescription,
    PartitionOffsets,
    Producer,
    RecordMetadata,
    Serializer,
    StringDeserializer,
    StringSerializer,
    SyncAdmin,
    SyncConsumer,
    SyncProducer,
    TopicDescription,
    TopicListing,
    TopicPartition,
    errors,
)
from raftka.client.errors import (
    DeliveryTimeoutError,
    NotLeaderError,
    OffsetOutOfRangeError,
    RaftkaConnectionError,
    RaftkaError,
    TopicExistsError,
    UnknownPartitionError,
    UnknownTopicError,
)
from raftka.partitioner import partition_for_key

__version__ = "0.1.0"

__all__ = [
    "Admin",
    "BrokerDescription",
    "BytesDeserializer",
    "BytesSerializer",
    "ClusterDescription",
    "Consumer",
    "ConsumerBatch",
    "ConsumerRecord",
    "DeliveryTimeoutError",
    "Deserializer",
    "JsonDeserializer",
    "JsonSerializer",
    "NotLeaderError",
    "OffsetOutOfRangeError",
    "PartitionDescription",
    "PartitionOffsets",
    "Producer",
    "RaftkaConnectionError",
    "RaftkaError",
    "RecordMetadata",
    "Serializer",
    "StringDeserializer",
    "StringSerializer",
    "SyncAdmin",
    "SyncConsumer",
    "SyncProducer",
    "TopicDescription",
    "TopicExistsError",
    "TopicListing",
    "TopicPartition",
    "UnknownPartitionError",
    "UnknownTopicError",
    "__version__",
    "errors",
    "partition_for_key",
]
