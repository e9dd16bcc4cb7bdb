"""Blocking wrappers: SyncProducer, SyncConsumer, SyncAdmin for code without an event loop.

Each wrapper owns one background thread running an asyncio loop, and runs its asyncio client there;
a method call hands a coroutine to that loop and blocks until it finishes. Calls from several
threads are serialized by the loop, so a SyncProducer may be shared between threads.

Cost: about one thread hop per call (tens of microseconds). For the highest throughput use the
asyncio clients directly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from raftka.client.accumulator import TopicPartition
from raftka.client.admin import (
    Admin,
    ClusterDescription,
    CommittedOffset,
    GroupDescription,
    GroupListing,
    PartitionOffsets,
    TopicDescription,
    TopicListing,
)
from raftka.client.consumer import Consumer, ConsumerBatch, ConsumerRecord
from raftka.client.producer import Producer, RecordMetadata

T = TypeVar("T")


class _LoopThread:
    """An asyncio loop running forever in a daemon thread, until stop()."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def call(self, awaitable: Awaitable[T], timeout_s: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("a blocking raftka call from inside its own event loop would deadlock")
        if self.loop.is_closed() or not self._thread.is_alive():
            raise RuntimeError("this client is closed")
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), self.loop)
        try:
            return future.result(timeout_s)
        except BaseException:
            future.cancel()
            raise

    @property
    def stopped(self) -> bool:
        return not self._thread.is_alive()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _build(factory: Any, *args: Any, **kwargs: Any) -> Any:
    return factory(*args, **kwargs)  # inside the loop, so the client binds to it


def _copy_outcome(target: concurrent.futures.Future, source: asyncio.Future) -> None:
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())


class SyncProducer:
    """A blocking Producer: `send()` returns a concurrent.futures.Future of the RecordMetadata."""

    def __init__(self, bootstrap: str | Sequence[str] | None = None, **options: Any):
        self._runner = _LoopThread("raftka-sync-producer")
        try:
            self._producer: Producer = self._runner.call(_build(Producer, bootstrap, **options))
        except BaseException:
            self._runner.stop()
            raise

    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, topic: str, value: Any = None, **kwargs: Any) -> concurrent.futures.Future[RecordMetadata]:
        """Buffer one record (blocking while the buffer is full); returns a future of its delivery."""
        result: concurrent.futures.Future[RecordMetadata] = concurrent.futures.Future()
        self._runner.call(self._enqueue(result, topic, value, kwargs))
        return result

    async def _enqueue(
        self, result: concurrent.futures.Future, topic: str, value: Any, kwargs: dict[str, Any]
    ) -> None:
        future = await self._producer.send(topic, value, **kwargs)
        future.add_done_callback(lambda f: _copy_outcome(result, f))

    def send_and_wait(self, topic: str, value: Any = None, **kwargs: Any) -> RecordMetadata:
        return self.send(topic, value, **kwargs).result()

    def flush(self, timeout_ms: int | None = None) -> None:
        self._runner.call(self._producer.flush(timeout_ms))

    def partitions_for(self, topic: str) -> list[int]:
        return self._runner.call(self._producer.partitions_for(topic))

    def close(self, timeout_ms: int | None = None) -> None:
        if self._runner.stopped:
            return
        try:
            self._runner.call(self._producer.close(timeout_ms))
        finally:
            self._runner.stop()


class SyncConsumer:
    """A blocking Consumer: the same methods, without `await`; iterate it to read forever."""

    def __init__(self, bootstrap: str | Sequence[str] | None = None, **options: Any):
        self._runner = _LoopThread("raftka-sync-consumer")
        try:
            self._consumer: Consumer = self._runner.call(_build(Consumer, bootstrap, **options))
        except BaseException:
            self._runner.stop()
            raise

    def __enter__(self) -> SyncConsumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[ConsumerRecord]:
        while True:
            yield from self.poll(self._consumer.fetch_max_wait_ms)

    async def _in_loop(self, method: str, *args: Any) -> Any:
        return getattr(self._consumer, method)(*args)

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        self._runner.call(self._in_loop("assign", list(partitions)))

    def assignment(self) -> list[tuple[str, int]]:
        return self._runner.call(self._in_loop("assignment"))

    def seek(self, tp: tuple[str, int], offset: int) -> None:
        self._runner.call(self._in_loop("seek", tp, offset))

    def seek_to_beginning(self, *partitions: tuple[str, int]) -> None:
        self._runner.call(self._in_loop("seek_to_beginning", *partitions))

    def seek_to_end(self, *partitions: tuple[str, int]) -> None:
        self._runner.call(self._in_loop("seek_to_end", *partitions))

    def position(self, tp: tuple[str, int]) -> int:
        return self._runner.call(self._consumer.position(tp))

    def highwater(self, tp: tuple[str, int]) -> int | None:
        return self._runner.call(self._in_loop("highwater", tp))

    def partitions_for(self, topic: str) -> list[int]:
        return self._runner.call(self._consumer.partitions_for(topic))

    def poll(self, timeout_ms: int = 1000, max_records: int | None = None) -> list[ConsumerRecord]:
        return self._runner.call(self._consumer.poll(timeout_ms, max_records))

    def poll_batches(self, timeout_ms: int = 1000, max_records: int | None = None) -> list[ConsumerBatch]:
        return self._runner.call(self._consumer.poll_batches(timeout_ms, max_records))

    def join(self, timeout_ms: int | None = None) -> list[TopicPartition]:
        return self._runner.call(self._consumer.join(timeout_ms))

    def commit(self, offsets: Mapping[tuple[str, int], int] | None = None) -> dict[TopicPartition, int]:
        return self._runner.call(self._consumer.commit(offsets))

    def committed(self, tp: tuple[str, int]) -> int | None:
        return self._runner.call(self._consumer.committed(tp))

    def subscription(self) -> list[str]:
        return self._runner.call(self._in_loop("subscription"))

    @property
    def member_id(self) -> str | None:
        return self._consumer.member_id

    def close(self) -> None:
        if self._runner.stopped:
            return
        try:
            self._runner.call(self._consumer.close())
        finally:
            self._runner.stop()


class SyncAdmin:
    """A blocking Admin."""

    def __init__(self, bootstrap: str | Sequence[str] | None = None, **options: Any):
        self._runner = _LoopThread("raftka-sync-admin")
        try:
            self._admin: Admin = self._runner.call(_build(Admin, bootstrap, **options))
        except BaseException:
            self._runner.stop()
            raise

    def __enter__(self) -> SyncAdmin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def create_topic(
        self,
        name: str,
        partitions: int | None = None,
        replication_factor: int | None = None,
        configs: Mapping[str, str | int | bool] | None = None,
    ) -> TopicDescription:
        return self._runner.call(self._admin.create_topic(name, partitions, replication_factor, configs))

    def list_topics(self) -> list[TopicListing]:
        return self._runner.call(self._admin.list_topics())

    def describe_topic(self, name: str) -> TopicDescription:
        return self._runner.call(self._admin.describe_topic(name))

    def alter_topic(
        self,
        name: str,
        *,
        partitions: int | None = None,
        configs: Mapping[str, str | int | bool] | None = None,
        delete_configs: Sequence[str] | None = None,
    ) -> TopicDescription:
        return self._runner.call(
            self._admin.alter_topic(
                name, partitions=partitions, configs=configs, delete_configs=delete_configs
            )
        )

    def delete_topic(self, name: str) -> None:
        self._runner.call(self._admin.delete_topic(name))

    def list_offsets(self, topic: str, partition: int) -> PartitionOffsets:
        return self._runner.call(self._admin.list_offsets(topic, partition))

    def offset_for_timestamp(self, topic: str, partition: int, timestamp_ms: int) -> int | None:
        return self._runner.call(self._admin.offset_for_timestamp(topic, partition, timestamp_ms))

    def describe_cluster(self) -> ClusterDescription:
        return self._runner.call(self._admin.describe_cluster())

    def list_groups(self) -> list[GroupListing]:
        return self._runner.call(self._admin.list_groups())

    def describe_group(self, group: str) -> GroupDescription:
        return self._runner.call(self._admin.describe_group(group))

    def group_offsets(self, group: str) -> list[CommittedOffset]:
        return self._runner.call(self._admin.group_offsets(group))

    def delete_group(self, group: str) -> None:
        self._runner.call(self._admin.delete_group(group))

    def reset_group_offsets(self, group: str, topic: str, **options: Any) -> dict[TopicPartition, int]:
        return self._runner.call(self._admin.reset_group_offsets(group, topic, **options))

    def close(self) -> None:
        if self._runner.stopped:
            return
        try:
            self._runner.call(self._admin.close())
        finally:
            self._runner.stop()
