"""The `raftka` command line: run a node, manage topics and consumer groups, produce and consume from
a terminal.

Every command but `node` is a thin shell over the asyncio client (raftka.client). Errors print one
line, `raftka: error: ...`, on stderr. Exit status: 0 success, 1 failure, 2 bad usage, 130 Ctrl-C
(except for `consume`, where Ctrl-C is the normal way to stop following and exits 0).
See docs/cli.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from raftka import __version__
from raftka.client._http import BOOTSTRAP_ENV, DEFAULT_BOOTSTRAP
from raftka.client.admin import Admin
from raftka.client.consumer import Consumer, ConsumerRecord
from raftka.client.errors import RaftkaConnectionError, RaftkaError, UnknownPartitionError, UnknownTopicError
from raftka.client.producer import Producer

PROG = "raftka"
STDIN_CHUNK_BYTES = 64 * 1024
STDIN_QUEUE_CHUNKS = 16  # bounds what the stdin reader may hold ahead of the producer: 1 MiB
PROGRESS_INTERVAL_S = 0.5


class CommandError(Exception):
    """A failure the user should read as one line (exit status 1)."""


# -- output helpers ------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns aligned on the widest cell, two spaces apart; None shows as '-'."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def print_json(document: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


def _ids(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values) or "-"


def _text_or_b64(data: bytes | None) -> tuple[str | None, str | None]:
    """(text, None) for UTF-8 bytes, (None, base64) for other bytes, (None, None) for null."""
    if data is None:
        return None, None
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, base64.b64encode(data).decode("ascii")


def record_to_json(record: ConsumerRecord) -> dict[str, Any]:
    """The `--format json` line: text where the bytes are UTF-8, else a *_b64 field."""
    key, key_b64 = _text_or_b64(record.key)
    value, value_b64 = _text_or_b64(record.value)
    out: dict[str, Any] = {
        "partition": record.partition,
        "offset": record.offset,
        "key": key,
        "value": value,
        "headers": {},
        "timestamp_ms": record.timestamp_ms,
    }
    if key_b64 is not None:
        out["key_b64"] = key_b64
    if value_b64 is not None:
        out["value_b64"] = value_b64
    headers_b64: dict[str, str] = {}
    for name, raw in record.headers:
        text, encoded = _text_or_b64(raw)
        if encoded is not None:
            headers_b64[name] = encoded
        else:
            out["headers"][name] = text
    if headers_b64:
        out["headers_b64"] = headers_b64
    return out


# -- topic and cluster commands ------------------------------------------------------------------------


def _parse_configs(items: Sequence[str] | None) -> dict[str, str]:
    configs: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CommandError(f"--config takes NAME=VALUE, got {item!r}")
        configs[name.strip()] = value.strip()
    return configs


async def cmd_topic_create(args: argparse.Namespace) -> int:
    async with Admin(args.bootstrap) as admin:
        try:
            topic = await admin.create_topic(
                args.name, args.partitions, args.replication_factor, _parse_configs(args.config)
            )
        except RaftkaError as exc:
            if args.if_not_exists and exc.error_code == 40901:
                return 0
            raise
    print(
        f"created topic {topic.name} ({len(topic.partitions)} partition(s), "
        f"replication factor {topic.replication_factor})"
    )
    return 0


async def cmd_topic_list(args: argparse.Namespace) -> int:
    async with Admin(args.bootstrap) as admin:
        topics = await admin.list_topics()
    if args.format == "json":
        print_json({"topics": [dataclasses.asdict(t) for t in topics]})
    elif topics:
        print(
            format_table(
                ["TOPIC", "PARTITIONS", "REPLICATION"],
                [(t.name, t.partitions, t.replication_factor) for t in topics],
            )
        )
    else:
        print("no topics", file=sys.stderr)
    return 0


async def cmd_topic_describe(args: argparse.Namespace) -> int:
    async with Admin(args.bootstrap) as admin:
        topic = await admin.describe_topic(args.name)
    if args.format == "json":
        print_json(dataclasses.asdict(topic))
        return 0
    print(
        f"Topic: {topic.name}  id: {topic.topic_id or '-'}  partitions: {len(topic.partitions)}  "
        f"replication factor: {topic.replication_factor}"
    )
    print()
    print(
        format_table(
            ["PARTITION", "LEADER", "REPLICAS", "ISR", "LEADER_EPOCH", "LOG_START_OFFSET", "HIGH_WATERMARK"],
            [
                (
                    p.partition,
                    p.leader,
                    _ids(p.replicas),
                    _ids(p.isr),
                    p.leader_epoch,
                    p.log_start_offset,
                    p.high_watermark,
                )
                for p in topic.partitions
            ],
        )
    )
    if topic.configs:
        print()
        print(format_table(["CONFIG", "VALUE"], sorted(topic.configs.items())))
    return 0


async def cmd_topic_alter(args: argparse.Namespace) -> int:
    configs = _parse_configs(args.config)
    if args.partitions is None and not configs and not args.delete_config:
        raise CommandError("nothing to alter: give --partitions, --config or --delete-config")
    async with Admin(args.bootstrap) as admin:
        topic = await admin.alter_topic(
            args.name, partitions=args.partitions, configs=configs, delete_configs=args.delete_config
        )
    print(f"altered topic {topic.name} ({len(topic.partitions)} partition(s))")
    return 0


async def cmd_topic_delete(args: argparse.Namespace) -> int:
    async with Admin(args.bootstrap) as admin:
        await admin.delete_topic(args.name)
    print(f"deleted topic {args.name}")
    return 0


async def cmd_cluster_status(args: argparse.Namespace) -> int:
    async with Admin(args.bootstrap) as admin:
        cluster = await admin.describe_cluster()
        ready = await asyncio.gather(*(admin.node_ready(b.address) for b in cluster.brokers))
    status = {True: "ready", False: "not ready", None: "unreachable"}
    if args.format == "json":
        document = dataclasses.asdict(cluster)
        for broker, state in zip(document["brokers"], ready, strict=True):
            broker["ready"] = status[state]
        print_json(document)
        return 0
    print(
        f"Cluster: {cluster.cluster_id}  controller: {cluster.controller_id} "
        f"(epoch {cluster.controller_epoch})  metadata offset: {cluster.metadata_offset}  "
        f"brokers: {len(cluster.brokers)}"
    )
    print()
    print(
        format_table(
            ["NODE_ID", "ADDRESS", "RACK", "ROLES", "STATUS", "READY"],
            [
                (
                    b.node_id,
                    b.address,
                    b.rack,
                    ",".join(b.roles),
                    b.status,
                    status[state],
                )
                for b, state in zip(cluster.brokers, ready, strict=True)
            ],
        )
    )
    return 0 if all(ready) else 1


# -- produce ------------------------------------------------------------------------------------------


async def stdin_lines() -> AsyncIterator[bytes]:
    """Lines of stdin without their line ending, read by a daemon thread (works for files, pipes, ttys).

    A daemon thread, not the loop's executor: a read blocked on a terminal must not keep the process
    alive after Ctrl-C.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(STDIN_QUEUE_CHUNKS)
    fd = sys.stdin.fileno()

    def read() -> None:
        try:
            while True:
                chunk = os.read(fd, STDIN_CHUNK_BYTES)
                asyncio.run_coroutine_threadsafe(queue.put(chunk or None), loop).result()
                if not chunk:
                    return
        except (OSError, RuntimeError):  # stdin closed, or the loop went away
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(queue.put(None), loop)

    threading.Thread(target=read, name="raftka-stdin", daemon=True).start()
    pending = b""
    while True:
        chunk = await queue.get()
        if chunk is None:
            break
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            yield line[:-1] if line.endswith(b"\r") else line
    if pending:
        yield pending[:-1] if pending.endswith(b"\r") else pending


class Progress:
    """The stderr progress line of `raftka produce` when stdin is not a terminal."""

    def __init__(self, topic: str, enabled: bool):
        self.topic = topic
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()
        self.started = time.monotonic()
        self.shown = self.started

    def maybe_show(self, sent: int) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if now - self.shown >= PROGRESS_INTERVAL_S:
            self.shown = now
            sys.stderr.write(f"\rsent {sent} records to {self.topic} ({self._rate(sent, now)} records/s)")
            sys.stderr.flush()

    def finish(self, delivered: int, failed: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        line = (
            f"produced {delivered} records to {self.topic} in {now - self.started:.1f} s "
            f"({self._rate(delivered, now)} records/s)"
        )
        if failed:
            line += f", {failed} failed"
        sys.stderr.write(("\r" if self.live else "") + line + "\n")
        sys.stderr.flush()

    def _rate(self, count: int, now: float) -> int:
        return round(count / max(now - self.started, 1e-6))


async def cmd_produce(args: argparse.Namespace) -> int:
    separator = args.key_separator.encode() if args.key_separator is not None else None
    if separator == b"":
        raise CommandError("--key-separator must not be empty")
    delivered = 0
    failures: list[BaseException] = []

    def on_delivery(future: asyncio.Future) -> None:
        nonlocal delivered
        if future.cancelled():
            failures.append(asyncio.CancelledError())
        elif future.exception() is not None:
            failures.append(future.exception())
        else:
            delivered += 1

    progress = Progress(args.topic, enabled=not sys.stdin.isatty())
    sent = 0
    bad_line: str | None = None
    # Idempotent (retries never duplicate) with acks=all, the default; acks=1/0 cannot be.
    idempotent = str(args.acks).lower() in ("all", "-1")
    async with Producer(
        args.bootstrap, acks=args.acks, linger_ms=args.linger_ms, enable_idempotence=idempotent
    ) as producer:
        partitions = await producer.partitions_for(args.topic)  # an unknown topic fails here, at once
        if args.partition is not None and args.partition not in partitions:
            raise UnknownPartitionError(
                40402, f"topic {args.topic!r} has no partition {args.partition} (it has {len(partitions)})"
            )
        async for line in stdin_lines():
            key = None
            value = line
            if separator is not None:
                key, sep, value = line.partition(separator)
                if not sep:
                    bad_line = f"line {sent + 1} has no key separator {args.key_separator!r}"
                    break
            future = await producer.send(args.topic, value, key=key, partition=args.partition)
            future.add_done_callback(on_delivery)
            sent += 1
            progress.maybe_show(sent)
        await producer.flush()
    progress.finish(delivered, len(failures))
    if bad_line is not None:
        raise CommandError(f"{bad_line}; sent the {sent} record(s) before it")
    if failures:
        raise CommandError(f"{len(failures)} of {sent} record(s) were not delivered: {failures[0]}")
    return 0


# -- consume ------------------------------------------------------------------------------------------


def _group_consumer(args: argparse.Namespace, reset: str) -> Consumer:
    """`consume --group`: a group member with auto-commit; assignment changes go to a terminal's stderr."""
    if args.offset is not None or args.partition is not None:
        raise CommandError(
            "--offset and --partition do not go with --group: the group assigns the partitions and "
            "starts each at its committed offset (use `raftka group reset-offsets` to move them)"
        )
    show = sys.stderr.isatty()

    def report(what: str):
        def callback(partitions: list) -> None:
            if show and partitions:
                names = ", ".join(f"{t}-{p}" for t, p in partitions)
                print(f"group {args.group}: {what} {names}", file=sys.stderr)

        return callback

    return Consumer(
        args.bootstrap,
        group=args.group,
        topics=[args.topic],
        auto_offset_reset=reset,
        fetch_max_wait_ms=500,
        on_assigned=report("assigned"),
        on_revoked=report("revoked"),
        on_lost=report("lost"),
    )


async def cmd_consume(args: argparse.Namespace) -> int:
    if args.offset is not None and args.from_beginning:
        raise CommandError("--offset and --from-beginning exclude each other")
    # With an explicit --offset an offset outside the log is an error, not a silent jump elsewhere.
    reset = "error" if args.offset is not None else "earliest" if args.from_beginning else "latest"
    separator = args.key_separator.encode()
    out = sys.stdout.buffer
    count = 0
    if args.group is not None:
        consumer = _group_consumer(args, reset)
    else:
        consumer = Consumer(args.bootstrap, auto_offset_reset=reset, fetch_max_wait_ms=500)
    try:
        partitions = await consumer.partitions_for(args.topic)  # an unknown topic fails here, at once
        if args.group is None:
            chosen = partitions if args.partition is None else args.partition
            for partition in chosen:
                if partition not in partitions:
                    raise UnknownPartitionError(
                        40402, f"topic {args.topic!r} has no partition {partition} (it has {len(partitions)})"
                    )
            consumer.assign([(args.topic, p) for p in chosen])
            for partition in chosen:
                if args.offset is not None:
                    consumer.seek((args.topic, partition), args.offset)
            if args.offset is None:
                (consumer.seek_to_beginning if args.from_beginning else consumer.seek_to_end)()
        idle_since = time.monotonic()
        while args.max_messages is None or count < args.max_messages:
            limit = None if args.max_messages is None else args.max_messages - count
            records = await consumer.poll(timeout_ms=500, max_records=limit)
            if not records:
                if args.timeout_ms is not None and (time.monotonic() - idle_since) * 1000 >= args.timeout_ms:
                    break
                continue
            idle_since = time.monotonic()
            if args.format == "json":
                out.write(b"".join(orjson.dumps(record_to_json(r)) + b"\n" for r in records))
            else:
                for record in records:
                    value = b"null" if record.value is None else record.value
                    if args.print_key:
                        key = b"null" if record.key is None else record.key
                        out.write(key + separator + value + b"\n")
                    else:
                        out.write(value + b"\n")
            out.flush()
            count += len(records)
    except asyncio.CancelledError:  # Ctrl-C: the normal end of following
        pass
    finally:
        await consumer.close()
    if sys.stderr.isatty():
        print(f"Processed a total of {count} messages", file=sys.stderr)
    return 0


# -- consumer groups ------------------------------------------------------------------------------------


def _partition_name(tp: Sequence[Any]) -> str:
    return f"{tp[0]}-{tp[1]}"


async def cmd_group_list(args: argparse.Namespace) -> int:
    async with Admin(args.bootstrap) as admin:
        groups = await admin.list_groups()
    if args.format == "json":
        print_json({"groups": [dataclasses.asdict(g) for g in groups]})
    elif groups:
        print(format_table(["GROUP", "STATE", "MEMBERS"], [(g.group, g.state, g.members) for g in groups]))
    else:
        print("no groups", file=sys.stderr)
    return 0


async def cmd_group_describe(args: argparse.Namespace) -> int:
    async with Admin(args.bootstrap) as admin:
        group = await admin.describe_group(args.group)
    if args.format == "json":
        print_json(dataclasses.asdict(group))
        return 0
    print(
        f"Group: {group.group}  state: {group.state}  assignor: {group.assignor or '-'}  "
        f"epoch: {group.group_epoch}  members: {len(group.members)}  total lag: {group.total_lag}"
    )
    owners = group.owner_of()
    if group.offsets:
        print()
        print(
            format_table(
                ["TOPIC", "PARTITION", "COMMITTED_OFFSET", "LOG_END_OFFSET", "LAG", "MEMBER"],
                [
                    (
                        o.topic,
                        o.partition,
                        o.committed_offset,
                        o.log_end_offset,
                        o.lag,
                        owners.get((o.topic, o.partition)),
                    )
                    for o in group.offsets
                ],
            )
        )
    if group.members:
        print()
        print(
            format_table(
                ["MEMBER_ID", "INSTANCE_ID", "EPOCH", "TOPICS", "ASSIGNMENT", "TARGET"],
                [
                    (
                        m.member_id,
                        m.instance_id,
                        m.member_epoch,
                        ",".join(m.topics) or None,
                        ",".join(map(_partition_name, m.assignment)) or None,
                        ",".join(map(_partition_name, m.target)) or None,
                    )
                    for m in group.members
                ],
            )
        )
    return 0


async def cmd_group_reset_offsets(args: argparse.Namespace) -> int:
    if args.to_offset is not None:
        to, extra = "offset", {"offset": args.to_offset}
    elif args.to_timestamp is not None:
        to, extra = "timestamp", {"timestamp_ms": args.to_timestamp}
    else:
        to, extra = ("earliest" if args.to_earliest else "latest"), {}
    partitions = sorted(set(args.partition)) if args.partition is not None else None
    async with Admin(args.bootstrap) as admin:
        offsets = await admin.reset_group_offsets(
            args.group, args.topic, to=to, partitions=partitions, dry_run=args.dry_run, **extra
        )
    rows = sorted(offsets.items())
    if args.format == "json":
        print_json(
            {
                "group": args.group,
                "dry_run": args.dry_run,
                "offsets": [{"topic": t, "partition": p, "offset": o} for (t, p), o in rows],
            }
        )
        return 0
    print(format_table(["TOPIC", "PARTITION", "NEW_OFFSET"], [(t, p, o) for (t, p), o in rows]))
    if args.dry_run:
        print(f"dry run: the offsets of group {args.group} are unchanged", file=sys.stderr)
    else:
        print(f"reset the offsets of group {args.group} in {len(rows)} partition(s)", file=sys.stderr)
    return 0


async def cmd_group_delete(args: argparse.Namespace) -> int:
    async with Admin(args.bootstrap) as admin:
        await admin.delete_group(args.group)
    print(f"deleted group {args.group}")
    return 0


# -- the parser ---------------------------------------------------------------------------------------


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--bootstrap",
        "-b",
        metavar="HOST:PORT",
        default=argparse.SUPPRESS,
        help=f"node(s) to talk to, comma-separated (env {BOOTSTRAP_ENV}; default {DEFAULT_BOOTSTRAP})",
    )
    parser = argparse.ArgumentParser(
        prog=PROG, description="Raftka: a lightweight distributed commit log", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"raftka {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    commands.add_parser("node", help="run a Raftka node (raftka node --help for its options)", add_help=False)

    topic = commands.add_parser("topic", help="create, list, describe, alter and delete topics")
    topic_commands = topic.add_subparsers(dest="topic_command", metavar="ACTION", required=True)
    create = topic_commands.add_parser("create", help="create a topic", parents=[common])
    create.add_argument("name")
    create.add_argument("--partitions", "-p", type=_positive, help="partition count (node default: 1)")
    create.add_argument("--replication-factor", "-r", type=_positive, help="replicas per partition")
    create.add_argument("--config", "-c", action="append", metavar="NAME=VALUE", help="a topic config")
    create.add_argument("--if-not-exists", action="store_true", help="succeed if the topic exists")
    create.set_defaults(handler=cmd_topic_create)
    listing = topic_commands.add_parser("list", help="list topics", parents=[common])
    listing.add_argument("--format", choices=("table", "json"), default="table")
    listing.set_defaults(handler=cmd_topic_list)
    describe = topic_commands.add_parser(
        "describe", help="partitions, leaders, offsets, configs", parents=[common]
    )
    describe.add_argument("name")
    describe.add_argument("--format", choices=("table", "json"), default="table")
    describe.set_defaults(handler=cmd_topic_describe)
    alter = topic_commands.add_parser("alter", help="add partitions, change configs", parents=[common])
    alter.add_argument("name")
    alter.add_argument("--partitions", "-p", type=_positive, help="the new (larger) partition count")
    alter.add_argument("--config", "-c", action="append", metavar="NAME=VALUE", help="set a config")
    alter.add_argument(
        "--delete-config", action="append", metavar="NAME", help="reset a config to its default"
    )
    alter.set_defaults(handler=cmd_topic_alter)
    delete = topic_commands.add_parser("delete", help="delete a topic and its data", parents=[common])
    delete.add_argument("name")
    delete.set_defaults(handler=cmd_topic_delete)

    produce = commands.add_parser(
        "produce", help="send one record per line of stdin", parents=[common], description=PRODUCE_HELP
    )
    produce.add_argument("topic")
    produce.add_argument("--key-separator", "-k", metavar="SEP", help="split each line into KEY SEP VALUE")
    produce.add_argument("--acks", choices=("all", "1", "0"), default="all", help="default: all")
    produce.add_argument("--partition", "-p", type=_non_negative, help="send every record to this partition")
    produce.add_argument("--linger-ms", type=_non_negative, default=5, help="batching delay (default: 5)")
    produce.set_defaults(handler=cmd_produce)

    consume = commands.add_parser(
        "consume", help="print records as they arrive", parents=[common], description=CONSUME_HELP
    )
    consume.add_argument("topic")
    consume.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest record (with --group: partitions that have no committed offset)",
    )
    consume.add_argument(
        "--group", "-g", help="consume as a member of this group, from its committed offsets (auto-commit)"
    )
    consume.add_argument("--offset", type=_non_negative, help="start at this offset (in each partition read)")
    consume.add_argument(
        "--partition", "-p", type=_non_negative, action="append", help="read only this partition (repeatable)"
    )
    consume.add_argument("--max-messages", "-n", type=_positive, help="exit after this many records")
    consume.add_argument("--timeout-ms", type=_non_negative, help="exit after this long without a record")
    consume.add_argument("--print-key", action="store_true", help="print KEY<separator>VALUE")
    consume.add_argument(
        "--key-separator", default="\t", metavar="SEP", help="with --print-key (default: tab)"
    )
    consume.add_argument(
        "--format", choices=("text", "json"), default="text", help="json: one object per line"
    )
    consume.set_defaults(handler=cmd_consume)

    group = commands.add_parser("group", help="list, describe, reset the offsets of and delete groups")
    group_commands = group.add_subparsers(dest="group_command", metavar="ACTION", required=True)
    group_list = group_commands.add_parser("list", help="list consumer groups", parents=[common])
    group_list.add_argument("--format", choices=("table", "json"), default="table")
    group_list.set_defaults(handler=cmd_group_list)
    group_describe = group_commands.add_parser(
        "describe", help="members, assignments, committed offsets and lag", parents=[common]
    )
    group_describe.add_argument("group")
    group_describe.add_argument("--format", choices=("table", "json"), default="table")
    group_describe.set_defaults(handler=cmd_group_describe)
    reset = group_commands.add_parser(
        "reset-offsets",
        help="move an empty group's committed offsets in a topic",
        parents=[common],
        description=RESET_HELP,
    )
    reset.add_argument("group")
    reset.add_argument("--topic", "-t", required=True, help="the topic whose offsets move")
    reset.add_argument(
        "--partition", "-p", type=_non_negative, action="append", help="only this partition (repeatable)"
    )
    target = reset.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-earliest", action="store_true", help="the oldest record kept")
    target.add_argument("--to-latest", action="store_true", help="the end: skip everything there is now")
    target.add_argument("--to-offset", type=_non_negative, metavar="N", help="offset N (kept inside the log)")
    target.add_argument(
        "--to-timestamp", type=_non_negative, metavar="MS", help="the first record at or after MS (epoch ms)"
    )
    reset.add_argument("--dry-run", action="store_true", help="show the new offsets, change nothing")
    reset.add_argument("--format", choices=("table", "json"), default="table")
    reset.set_defaults(handler=cmd_group_reset_offsets)
    group_delete = group_commands.add_parser(
        "delete", help="delete an empty group's committed offsets", parents=[common]
    )
    group_delete.add_argument("group")
    group_delete.set_defaults(handler=cmd_group_delete)

    cluster = commands.add_parser("cluster", help="cluster information")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    status = cluster_commands.add_parser(
        "status", help="brokers and whether they are ready", parents=[common]
    )
    status.add_argument("--format", choices=("table", "json"), default="table")
    status.set_defaults(handler=cmd_cluster_status)
    up = cluster_commands.add_parser(
        "up",
        help="run a local cluster in the foreground (Ctrl-C stops it)",
        description=(
            "Start NODES controller nodes (the Raft voters) and BROKERS broker-only nodes on 127.0.0.1, "
            "data under DATA_DIR/node-N, HTTP on ports 9401.., Raft on 9501.. . Ctrl-C stops them all "
            "(controlled shutdown); starting again with the same options brings the same cluster back."
        ),
    )
    up.add_argument("--nodes", type=int, default=3, help="controller nodes (voters): 1, 3 or 5 (default 3)")
    up.add_argument("--brokers", type=int, default=0, help="broker-only nodes (default 0)")
    up.add_argument("--data-dir", default="./data", help="default ./data")
    up.add_argument("--http-port", type=int, default=9401, help="HTTP port of node 1 (default 9401)")
    up.add_argument("--raft-port", type=int, default=9501, help="Raft port of node 1 (default 9501)")
    up.set_defaults(handler=None)

    drain = commands.add_parser(
        "drain",
        help="move a node's partition leaderships away before it stops (a pod's preStop hook)",
        description=DRAIN_HELP,
    )
    drain.add_argument("--node", default="127.0.0.1:9092", metavar="HOST:PORT", help="default 127.0.0.1:9092")
    drain.add_argument("--timeout-s", type=float, default=60, help="give up after this long (default 60)")
    drain.add_argument(
        "--in-sync-wait-s",
        type=float,
        default=30,
        help="first wait at most this long for other replicas catching up (default 30; 0: do not wait)",
    )
    drain.set_defaults(handler=None)

    chaos = commands.add_parser("chaos", help="partition-tolerance experiments against a local cluster")
    chaos_commands = chaos.add_subparsers(dest="chaos_command", metavar="ACTION", required=True)
    chaos_run = chaos_commands.add_parser(
        "run",
        help="start a local cluster, run a workload under faults, check the history, write a report",
        description=CHAOS_HELP,
    )
    chaos_run.add_argument(
        "--nemesis",
        default="kill,pause",
        help="faults, comma-separated: kill, pause, partition (root: namespaces), link-cut, link-slow, "
        "link-bandwidth, link-half-open, link-reset, link-limit (Toxiproxy; not with partition)",
    )
    chaos_run.add_argument(
        "--workload",
        default="queue,metadata",
        help="workloads, comma-separated: queue, metadata (default both)",
    )
    chaos_run.add_argument(
        "--shapes",
        default="one,leader,controller,minority,majority",
        help="whom a fault hits, comma-separated: one, leader, controller, minority, majority, ring",
    )
    chaos_run.add_argument("--duration", type=float, default=120, help="seconds of faults (default 120)")
    chaos_run.add_argument("--fault-s", type=float, default=5, help="how long a fault holds (default 5)")
    chaos_run.add_argument("--heal-s", type=float, default=5, help="quiet time between faults (default 5)")
    chaos_run.add_argument("--out", default="report", help="report directory (default ./report)")
    chaos_run.add_argument("--nodes", type=int, default=3, help="controller nodes (default 3)")
    chaos_run.add_argument(
        "--partitions", type=int, default=3, help="partitions of the queue topic (default 3)"
    )
    chaos_run.add_argument("--producers", type=int, default=2, help="producer processes (default 2)")
    chaos_run.add_argument("--consumers", type=int, default=2, help="consumer processes (default 2)")
    chaos_run.add_argument(
        "--rate", type=float, default=50, help="values per second per producer (default 50)"
    )
    chaos_run.add_argument("--seed", type=int, default=1, help="seeds the choice of faults and targets")
    chaos_run.set_defaults(handler=None)
    return parser


PRODUCE_HELP = (
    "Send one record per line of stdin (the value is the line without its line ending). With "
    "--key-separator each line is KEY<SEP>VALUE. When stdin is not a terminal a progress line goes to stderr."
)
CONSUME_HELP = (
    "Print the records of a topic, one value per line, following new records until Ctrl-C (or "
    "--max-messages / --timeout-ms). Starts at the end unless --from-beginning or --offset. With --group "
    "it reads the partitions the group assigns it, from the group's committed offsets, and commits what "
    "it printed (every 5 s and on exit)."
)
CHAOS_HELP = (
    "Start a local cluster under OUT/cluster (free ports), producers and consumers of a queue topic, and a "
    "nemesis that alternates HEAL_S of quiet with one fault held for FAULT_S, for DURATION seconds. Then "
    "heal, drain every partition, check the history (lost, duplicated, moved or unexpected values, "
    "inconsistent offsets, consumers going back or skipping) and write OUT/history.jsonl, OUT/verdict.json, "
    "OUT/summary.txt and OUT/timeline.png. Exit status 0 when the history is valid, 1 when not."
)
DRAIN_HELP = (
    "Ask the controller to move the leaderships of the node at --node to other in-sync replicas and to take "
    "it out of the ISRs, after waiting (at most --in-sync-wait-s) for replicas on other nodes that are "
    "catching up; returns when the node leads no partition another in-sync replica could take. The node "
    "keeps running (not ready) until it is stopped. Exit status 0 when drained, 1 when not in --timeout-s. "
    "See docs/kubernetes.md."
)
RESET_HELP = (
    "Set the committed offsets of GROUP in a topic (all its partitions, or those named with --partition). "
    "The group must have no members. --dry-run shows the new offsets without changing them."
)


# -- chaos run ---------------------------------------------------------------------------------------


def chaos_run(args: argparse.Namespace) -> int:
    """`raftka chaos run`: one experiment (raftka/chaos/runner.py); 0 when the history is valid."""
    from raftka.chaos.nemesis import FAULTS, SHAPES
    from raftka.chaos.runner import Experiment, run
    from raftka.local_cluster import free_ports

    faults = [f.strip() for f in args.nemesis.split(",") if f.strip()]
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    workloads = [w.strip() for w in args.workload.split(",") if w.strip()]
    bad = (
        [f for f in faults if f not in FAULTS]
        + [s for s in shapes if s not in SHAPES]
        + [w for w in workloads if w not in ("queue", "metadata")]
    )
    if not faults or not shapes or not workloads or bad:
        return _error(
            f"--nemesis takes {', '.join(FAULTS)}, --shapes {', '.join(SHAPES)} and --workload queue, metadata"
            + (f"; unknown: {', '.join(bad)}" if bad else "")
        )
    if "partition" in faults and any(f.startswith("link-") for f in faults):
        return _error(
            "--nemesis: partition and link-* faults cannot share a run (namespaced nodes cannot reach the proxies)"
        )
    if args.duration <= 0 or args.fault_s <= 0 or args.heal_s < 0 or args.nodes < 1 or args.partitions < 1:
        return _error(
            "--duration and --fault-s must be positive, --heal-s >= 0, --nodes and --partitions >= 1"
        )
    experiment = Experiment(
        out=args.out,
        nemesis=faults,
        shapes=shapes,
        duration_s=args.duration,
        fault_s=args.fault_s,
        heal_s=args.heal_s,
        nodes=args.nodes,
        partitions=args.partitions,
        producers=args.producers,
        consumers=args.consumers,
        rate=args.rate,
        seed=args.seed,
        workloads=workloads,
    )
    ports = free_ports(2 * args.nodes)
    try:
        verdict = run(experiment, ports[: args.nodes], ports[args.nodes :])
    except RuntimeError as exc:  # no namespaces (not root), a node that would not start, no healing
        return _error(f"chaos run: {exc} (node logs under {os.path.join(args.out, 'cluster')})")
    with open(os.path.join(args.out, "summary.txt"), encoding="utf-8") as handle:
        print(handle.read(), end="")
    return 0 if verdict["valid"] else 1


# -- cluster up ---------------------------------------------------------------------------------------


def cluster_up(args: argparse.Namespace) -> int:
    """Run a LocalCluster in the foreground until Ctrl-C or SIGTERM; 0 when every node stopped cleanly."""
    import signal

    from raftka.local_cluster import LocalCluster

    if args.nodes not in (1, 3, 5):
        return _error(f"--nodes must be 1, 3 or 5 (a Raft quorum of an odd size), got {args.nodes}")
    if args.brokers < 0:
        return _error(f"--brokers must be 0 or more, got {args.brokers}")
    total = args.nodes + args.brokers
    print_lock = threading.Lock()

    def on_line(node, line: str) -> None:
        with print_lock:
            print(f"[node-{node.node_id}] {line}", flush=True)

    cluster = LocalCluster(
        args.data_dir,
        controllers=args.nodes,
        brokers=args.brokers,
        http_ports=[args.http_port + i for i in range(total)],
        raft_ports=[args.raft_port + i for i in range(args.nodes)],
        on_line=on_line,
    )

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        cluster.start(wait_s=None)
        cluster.wait_ready(120)
        with print_lock:
            print(
                f"cluster ready: {args.nodes} controller(s), {args.brokers} broker-only node(s); "
                f"bootstrap {cluster.bootstrap}\n"
                f"  try: RAFTKA_BOOTSTRAP={cluster.nodes[0].address} raftka cluster status\n"
                "  Ctrl-C stops the cluster",
                flush=True,
            )
        while all(node.alive() for node in cluster.nodes):
            time.sleep(0.2)
        dead = [n.node_id for n in cluster.nodes if not n.alive()]
        _error(f"node(s) {', '.join(map(str, dead))} exited; stopping the cluster")
        cluster.stop()
        return 1
    except KeyboardInterrupt:
        # A second Ctrl-C or SIGTERM must not leave nodes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with print_lock:
            print("stopping the cluster ...", flush=True)
        codes = cluster.stop()
        return 0 if all(code == 0 for code in codes.values()) else 1
    except RuntimeError as exc:
        cluster.stop()
        return _error(str(exc).splitlines()[0])


# -- main ---------------------------------------------------------------------------------------------


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "node":
        from node.main import main as node_main  # lazily: the client commands do not need the node

        return node_main(argv[1:]) or 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "node":  # `raftka --bootstrap X node`: the node has no use for it
        from node.main import main as node_main

        return node_main([]) or 0
    if args.command == "cluster" and args.cluster_command == "up":
        return cluster_up(args)
    if args.command == "chaos":
        return chaos_run(args)
    if args.command == "drain":
        from raftka.k8s import drain_main

        return drain_main(args.node, args.timeout_s, args.in_sync_wait_s)
    bootstrap = getattr(args, "bootstrap", None) or os.environ.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP
    args.bootstrap = bootstrap
    try:
        return asyncio.run(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except RaftkaConnectionError as exc:
        return _error(
            f"cannot reach a Raftka node at {bootstrap} ({exc.reason}); is it running? "
            f"Start one with `raftka node`, or set --bootstrap or {BOOTSTRAP_ENV}"
        )
    except UnknownTopicError as exc:
        topic = getattr(args, "topic", None)
        hint = (
            f"; create it with `raftka topic create {topic}`" if topic and "create" not in exc.message else ""
        )
        return _error(exc.message + hint)
    except RaftkaError as exc:
        return _error(exc.message)
    except CommandError as exc:
        return _error(str(exc))
    except BrokenPipeError:
        # The reader went away (`raftka consume ... | head`): not an error. Point stdout at devnull so
        # that the interpreter's final flush does not fail again.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
