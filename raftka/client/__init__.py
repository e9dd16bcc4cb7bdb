"""The Raftka client library: asyncio Producer, Consumer and Admin, their blocking wrappers, errors
and serializers. Import them from `raftka` (see docs/client.md)."""

from raftka.client.accumulator import TopicPartition
from raftka.client.admin import (
    Admin,
    BrokerDescription,
    ClusterDescription,
    CommittedOffset,
    GroupDescription,
    GroupListing,
    GroupPartitionLag,
    MemberDescription,
    PartitionDescription,
    PartitionOffsets,
    TopicDescription,
    TopicListing,
)
from raftka.client.blocking import SyncAdmin, SyncConsumer, SyncProducer
from raftka.client.consumer import Consumer, ConsumerBatch, ConsumerRecord
from raftka.client.errors import *  # noqa: F403 - the error hierarchy is part of the public face
from raftka.client.errors import (
    CommitFailedError,
    GroupNotEmptyError,
    NotPartitionOwnerError,
    RaftkaError,
    StaleMemberEpochError,
    UnknownGroupError,
    UnknownMemberError,
)
from raftka.client.producer import Producer, RecordMetadata
from raftka.client.schema_registry import RegisteredSchema, SchemaRegistryClient, SchemaRegistryError
from raftka.client.serializers import (
    AvroDeserializer,
    AvroSerializer,
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
    "AvroDeserializer",
    "AvroSerializer",
    "BrokerDescription",
    "BytesDeserializer",
    "BytesSerializer",
    "ClusterDescription",
    "CommitFailedError",
    "CommittedOffset",
    "Consumer",
    "ConsumerBatch",
    "ConsumerRecord",
    "Deserializer",
    "GroupDescription",
    "GroupListing",
    "GroupNotEmptyError",
    "GroupPartitionLag",
    "JsonDeserializer",
    "JsonSerializer",
    "MemberDescription",
    "NotPartitionOwnerError",
    "PartitionDescription",
    "PartitionOffsets",
    "Producer",
    "RaftkaError",
    "RecordMetadata",
    "RegisteredSchema",
    "SchemaRegistryClient",
    "SchemaRegistryError",
    "Serializer",
    "StaleMemberEpochError",
    "StringDeserializer",
    "StringSerializer",
    "SyncAdmin",
    "SyncConsumer",
    "SyncProducer",
    "TopicDescription",
    "TopicListing",
    "TopicPartition",
    "UnknownGroupError",
    "UnknownMemberError",
]
