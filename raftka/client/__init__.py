"""The Raftka client library: asyncio Producer, Consumer and Admin, their blocking wrappers, errors
and serializers. Import them from `raftka` (see docs/client.md)."""

from raftka.client.accumulator import TopicPartition
from raftka.client.admin import (
    Admin,
    BrokerDescription,
    ClusterDescription,
    PartitionDescription,
    PartitionOffsets,
    TopicDescription,
    TopicListing,
)
from raftka.client.blocking import SyncAdmin, SyncConsumer, SyncProducer
from raftka.client.consumer import Consumer, ConsumerBatch, ConsumerRecord
from raftka.client.errors import *  # noqa: F403 - the error hierarchy is part of the public face
from raftka.client.errors import RaftkaError
from raftka.client.producer import Producer, RecordMetadata
from raftka.client.serializers import (
    BytesDeserializer,
    BytesSerializer,
    Deserializer,
    JsonDeserializer,
    JsonSerializer,
    Serializer,
    StringDeserializer,
    StringSerializer,
)

__all__ = [
    "Admin",
    "BrokerDescription",
    "BytesDeserializer",
    "BytesSerializer",
    "ClusterDescription",
    "Consumer",
    "ConsumerBatch",
    "ConsumerRecord",
    "Deserializer",
    "JsonDeserializer",
    "JsonSerializer",
    "PartitionDescription",
    "PartitionOffsets",
    "Producer",
    "RaftkaError",
    "RecordMetadata",
    "Serializer",
    "StringDeserializer",
    "StringSerializer",
    "SyncAdmin",
    "SyncConsumer",
    "SyncProducer",
    "TopicDescription",
    "TopicListing",
    "TopicPartition",
]
