"""The record batch codec: round trips, null vs empty, checksum scope and refusal of bad bytes."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import record_batch
from storage.record_batch import (
    COLUMN_BLOCK_RECORDS,
    HEADER_SIZE,
    RECORD_HEADER_SIZE,
    UNIFORM_MIN_RECORDS,
    CorruptBatchError,
    InvalidBatchError,
    NewRecord,
    check_batch,
    check_producer_batch,
    check_record_framing,
    decode_batches,
    decode_batches_columns,
    decode_columns,
    decode_records,
    encode_batch,
    iter_batches,
    read_header,
    stamp_prefix,
    uniform_record_size,
)

NOW = 1_764_000_000_000

maybe_bytes = st.one_of(st.none(), st.binary(max_size=40))
headers = st.lists(st.tuples(st.text(max_size=8), maybe_bytes), max_size=3)
records = st.lists(
    st.builds(NewRecord, maybe_bytes, maybe_bytes, st.integers(NOW - 10**6, NOW + 10**6), headers),
    min_size=1,
    max_size=20,
)


@given(records)
@settings(max_examples=200, deadline=None)
def test_round_trip_keeps_every_field(recs):
    batch = encode_batch(recs, now_ms=NOW, base_offset=7, leader_epoch=3)
    header = check_producer_batch(batch)
    assert header.base_offset == 7
    assert header.leader_epoch == 3
    assert header.record_count == len(recs)
    assert header.last_offset_delta == len(recs) - 1
    assert header.first_timestamp == recs[0].timestamp_ms
    assert header.max_timestamp == max(r.timestamp_ms for r in recs)
    decoded = decode_records(batch)
    assert [r.offset for r in decoded] == list(range(7, 7 + len(recs)))
    for original, got in zip(recs, decoded, strict=True):
        assert got.key == original.key
        assert got.value == original.value
        assert got.timestamp_ms == original.timestamp_ms
        assert list(got.headers) == [tuple(h) for h in original.headers]


def test_null_and_empty_are_distinct():
    batch = encode_batch(
        [NewRecord(None, None), NewRecord(b"", b""), NewRecord(b"k", None), NewRecord(None, b"")], now_ms=NOW
    )
    got = [(r.key, r.value) for r in decode_records(batch)]
    assert got == [(None, None), (b"", b""), (b"k", None), (None, b"")]


def test_missing_timestamps_take_now():
    batch = encode_batch([NewRecord(b"k", b"v"), NewRecord(b"k", b"w", NOW + 5)], now_ms=NOW)
    header = read_header(batch)
    assert header.first_timestamp == NOW
    assert header.max_timestamp == NOW + 5
    assert [r.timestamp_ms for r in decode_records(batch)] == [NOW, NOW + 5]


def test_stamping_offset_and_epoch_keeps_the_checksum_valid():
    batch = encode_batch([NewRecord(b"k", b"v")], now_ms=NOW)
    stamped = stamp_prefix(batch, 123_456, 9) + batch[17:]
    header = check_batch(stamped)
    assert (header.base_offset, header.leader_epoch, header.checksum) == (
        123_456,
        9,
        read_header(batch).checksum,
    )


def test_checksum_covers_everything_after_it():
    batch = bytearray(encode_batch([NewRecord(b"key", b"value", NOW, [("h", b"x")])], now_ms=NOW))
    for position in range(25, len(batch)):
        corrupt = bytearray(batch)
        corrupt[position] ^= 0x01
        with pytest.raises(InvalidBatchError):
            check_producer_batch(bytes(corrupt))


def test_corrupt_checksum_is_named():
    batch = bytearray(encode_batch([NewRecord(b"k", b"v")], now_ms=NOW))
    batch[-1] ^= 0xFF
    with pytest.raises(CorruptBatchError, match="checksum mismatch"):
        check_batch(bytes(batch))


@pytest.mark.parametrize(
    ("field_offset", "fmt", "value", "message"),
    [
        (16, "<b", 7, "magic"),
        (8, "<i", 3, "shorter than a batch header"),
        (8, "<i", 10_000, "runs past"),
    ],
)
def test_impossible_headers_are_refused(field_offset, fmt, value, message):
    batch = bytearray(encode_batch([NewRecord(b"k", b"v")], now_ms=NOW))
    struct.pack_into(fmt, batch, field_offset, value)
    with pytest.raises(InvalidBatchError, match=message):
        check_batch(bytes(batch))


def _rehashed(batch: bytearray) -> bytes:
    import xxhash

    struct.pack_into("<Q", batch, 17, xxhash.xxh3_64_intdigest(bytes(batch[25:])))
    return bytes(batch)


@pytest.mark.parametrize(
    ("field_offset", "fmt", "value", "message"),
    [
        (25, "<h", 0x40, "reserved attribute"),
        (25, "<h", 0x01, "compression"),
        (27, "<i", -1, "last_offset_delta"),
        (61, "<i", -2, "record_count"),
        (61, "<i", 5, "exceeds last_offset_delta"),
        (39, "<q", NOW - 1, "max_timestamp"),
    ],
)
def test_impossible_fields_under_a_valid_checksum_are_refused(field_offset, fmt, value, message):
    batch = bytearray(encode_batch([NewRecord(b"k", b"v")], now_ms=NOW))
    struct.pack_into(fmt, batch, field_offset, value)
    with pytest.raises(InvalidBatchError, match=message):
        check_producer_batch(_rehashed(batch))


def test_record_framing_errors_are_refused_even_with_a_valid_checksum():
    batch = bytearray(encode_batch([NewRecord(b"k", b"v")], now_ms=NOW))
    struct.pack_into("<i", batch, HEADER_SIZE + 12, 1000)  # key length past the end
    with pytest.raises(InvalidBatchError, match="runs past"):
        check_producer_batch(_rehashed(batch))


def test_producer_batches_must_be_dense_and_whole():
    sparse = encode_batch([NewRecord(b"k", b"v")], now_ms=NOW, offset_deltas=[2], last_offset_delta=2)
    with pytest.raises(InvalidBatchError, match="dense"):
        check_producer_batch(sparse)
    batch = encode_batch([NewRecord(b"k", b"v")], now_ms=NOW)
    with pytest.raises(InvalidBatchError, match="were given"):
        check_producer_batch(batch + b"\x00")
    with pytest.raises(InvalidBatchError):
        encode_batch([], now_ms=NOW)


def test_compacted_batches_keep_offsets_and_may_be_empty():
    batch = encode_batch(
        [NewRecord(b"a", b"1", NOW), NewRecord(b"c", b"3", NOW + 2)],
        now_ms=NOW,
        base_offset=100,
        offset_deltas=[0, 2],
        last_offset_delta=4,
    )
    header = check_batch(batch)
    assert header.last_offset == 104
    assert [r.offset for r in decode_records(batch)] == [100, 102]
    empty = encode_batch([], now_ms=NOW, base_offset=100, last_offset_delta=4)
    assert check_batch(empty).record_count == 0
    assert decode_records(empty) == []


def test_iter_batches_walks_a_run_and_refuses_a_partial_tail():
    run = b"".join(encode_batch([NewRecord(b"k", b"%d" % i)], now_ms=NOW, base_offset=i) for i in range(5))
    assert [h.base_offset for h, _ in iter_batches(run)] == [0, 1, 2, 3, 4]
    assert [r.value for r in decode_batches(run)] == [b"0", b"1", b"2", b"3", b"4"]
    with pytest.raises(InvalidBatchError):
        list(iter_batches(run[:-3]))


def test_sequence_numbers_wrap_like_kafka():
    batch = encode_batch(
        [NewRecord(b"k", b"v"), NewRecord(b"k", b"w")],
        now_ms=NOW,
        producer_id=1,
        producer_epoch=0,
        base_sequence=2**31 - 1,
    )
    assert read_header(batch).last_sequence == 0


@pytest.mark.parametrize(
    ("record_field", "fmt", "value", "message"),
    [
        (0, "<i", 1, "offset delta"),  # offset delta of the first record
        (12, "<i", -2, "negative length"),  # key length
        (16, "<i", -7, "negative length"),  # value length
        (20, "<i", -1, "header count"),
        (20, "<i", 3, "runs past"),  # header count grown past the end
    ],
)
def test_record_framing_walk_refuses_bad_records(record_field, fmt, value, message):
    batch = bytearray(encode_batch([NewRecord(b"k", b"value", NOW, [("h", b"x")])], now_ms=NOW))
    struct.pack_into(fmt, batch, HEADER_SIZE + record_field, value)
    with pytest.raises(InvalidBatchError, match=message):
        check_producer_batch(_rehashed(batch))


def test_record_framing_walk_refuses_bytes_left_over():
    batch = bytearray(encode_batch([NewRecord(b"k", b"value", NOW)], now_ms=NOW))
    struct.pack_into("<i", batch, HEADER_SIZE + 16, 2)  # value length shrunk from 5 to 2
    with pytest.raises(InvalidBatchError, match="3 bytes after its last record"):
        check_producer_batch(_rehashed(batch))


@given(records)
@settings(max_examples=100, deadline=None)
def test_record_framing_walk_accepts_what_the_encoder_writes(recs):
    check_producer_batch(encode_batch(recs, now_ms=NOW))


# The shared-layout fast path (uniform_record_size) must agree with the record-by-record walk on every
# batch: on the ones it takes, and on the ones it must hand back to the walk.

uniform_layouts = st.tuples(
    st.integers(UNIFORM_MIN_RECORDS, 70),  # record count
    st.integers(-1, 12),  # key length, -1 = null
    st.integers(-1, 12),  # value length, -1 = null
    st.lists(st.integers(NOW - 10**6, NOW + 10**6), min_size=1, max_size=3),  # timestamps cycled
)


def _uniform_batch(count: int, key_len: int, value_len: int, stamps: list[int]) -> bytes:
    def field(length: int, i: int) -> bytes | None:
        return None if length < 0 else bytes([i % 251]) * length

    recs = [
        NewRecord(field(key_len, i), field(value_len, i + 1), stamps[i % len(stamps)]) for i in range(count)
    ]
    return encode_batch(recs, now_ms=NOW, base_offset=40)


def _outcome(action):
    try:
        return ("ok", action())
    except InvalidBatchError as exc:
        return ("refused", type(exc))


@given(uniform_layouts, st.data())
@settings(max_examples=300, deadline=None)
def test_shared_layout_path_agrees_with_the_walk(layout, data):
    batch = bytearray(_uniform_batch(*layout))
    if data.draw(st.booleans(), label="damage a record header"):
        record = data.draw(st.integers(0, layout[0] - 1), label="record")
        size = RECORD_HEADER_SIZE + max(layout[1], 0) + max(layout[2], 0)
        at = HEADER_SIZE + record * size + data.draw(st.integers(0, RECORD_HEADER_SIZE - 1), label="byte")
        batch[at] ^= data.draw(st.integers(1, 255), label="xor")
    batch = _rehashed(batch)
    header = read_header(batch)
    fast = (_outcome(lambda: check_record_framing(batch, header)), _outcome(lambda: decode_records(batch)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(record_batch, "UNIFORM_MIN_RECORDS", 10**9)  # the walk only
        walk = (
            _outcome(lambda: check_record_framing(batch, header)),
            _outcome(lambda: decode_records(batch)),
        )
    assert fast == walk
    if fast[0][0] == "ok":
        assert decode_batches(batch + batch) == walk[1][1] * 2


def test_shared_layout_path_is_taken_for_a_dense_batch_and_not_for_a_compacted_one():
    batch = _uniform_batch(100, 9, 100, [NOW])
    assert uniform_record_size(batch, 0, read_header(batch)) == RECORD_HEADER_SIZE + 9 + 100
    recs = [NewRecord(b"k", b"v", NOW)] * 20
    sparse = encode_batch(recs, now_ms=NOW, offset_deltas=list(range(0, 40, 2)))
    assert uniform_record_size(sparse, 0, read_header(sparse)) is None
    assert [r.offset for r in decode_records(sparse)] == list(range(0, 40, 2))


# The columnar decoder must hand out exactly what the record decoder does, and refuse exactly what it
# refuses (same error, same message): on batches of any layout, compacted ones, and damaged ones.


@st.composite
def any_batch(draw) -> bytes:
    kind = draw(st.sampled_from(["records", "compacted", "uniform", "empty"]))
    if kind == "uniform":
        return _uniform_batch(*draw(uniform_layouts))
    if kind == "empty":  # every record compacted away
        return encode_batch([], now_ms=NOW, last_offset_delta=draw(st.integers(0, 5)))
    recs = draw(records)
    deltas = None
    if kind == "compacted":
        steps = draw(st.lists(st.integers(1, 3), min_size=len(recs), max_size=len(recs)))
        deltas = list(itertools.accumulate(steps, initial=draw(st.integers(0, 2))))[: len(recs)]
    return encode_batch(recs, now_ms=NOW, base_offset=draw(st.integers(0, 10**6)), offset_deltas=deltas)


@st.composite
def damaged(draw, batches) -> bytes:
    batch = bytearray(draw(batches))
    if len(batch) > HEADER_SIZE and draw(st.booleans(), label="damage a record"):
        at = draw(st.integers(HEADER_SIZE, len(batch) - 1), label="byte")
        batch[at] ^= draw(st.integers(1, 255), label="xor")
    return _rehashed(batch)


def _rows(columns) -> list[tuple]:
    headers = columns.headers if columns.headers is not None else [()] * len(columns.offsets)
    columns_of = (columns.offsets, columns.timestamps, columns.keys, columns.values, headers)
    assert len({len(column) for column in columns_of}) == 1, "columns of different lengths"
    return list(zip(*columns_of, strict=True))


def _decoded(action):
    try:
        return ("ok", action())
    except InvalidBatchError as exc:
        return ("refused", type(exc), str(exc))


def _assert_transposed(parts, rows) -> None:
    """Both decoders refused with the same error, or the parts (BatchColumns) hold the records in order."""
    if parts[0] == "refused" or rows[0] == "refused":
        assert parts == rows
        return
    assert [row for part in parts[1] for row in _rows(part)] == rows[1]
    for part in parts[1]:
        offsets = list(part.offsets)
        dense = not offsets or offsets[-1] - offsets[0] == len(offsets) - 1
        assert isinstance(part.offsets, range) == dense
        assert part.headers is None or any(part.headers)  # None exactly when no record has a header


@given(damaged(any_batch()))
@settings(max_examples=400, deadline=None)
def test_columns_are_the_records_transposed(batch):
    header = read_header(batch)
    _assert_transposed(
        _decoded(lambda: [decode_columns(batch, 0, header)]),
        _decoded(lambda: [tuple(r) for r in decode_records(batch)]),
    )


@given(st.lists(damaged(any_batch()), min_size=1, max_size=4), st.data())
@settings(max_examples=300, deadline=None)
def test_columns_of_a_run_are_its_records_transposed(batches, data):
    run = []
    base_offset = data.draw(st.integers(0, 100), label="first base offset")
    for batch in batches:  # laid end to end, sometimes with a gap between batches
        run.append(stamp_prefix(batch, base_offset, 0) + batch[17:])
        base_offset = read_header(run[-1]).next_offset + data.draw(st.integers(0, 1), label="gap")
    run_bytes = b"".join(run)
    parts = _decoded(lambda: decode_batches_columns(run_bytes))
    _assert_transposed(parts, _decoded(lambda: [tuple(r) for r in decode_batches(run_bytes)]))
    if parts[0] == "ok":  # one part per shared-layout batch or stretch of others, none empty
        assert all(len(part.offsets) for part in parts[1])
        assert len(parts[1]) <= 2 * len(batches)


@pytest.mark.parametrize("distinct_timestamps", [1, 2, "all"])
def test_columns_of_a_shared_layout_batch_are_cut_without_the_walk(distinct_timestamps):
    for count in (UNIFORM_MIN_RECORDS, COLUMN_BLOCK_RECORDS * 3, COLUMN_BLOCK_RECORDS * 3 + 5):
        stamps = [NOW - i for i in range(count if distinct_timestamps == "all" else distinct_timestamps)]
        for key_len, value_len in ((9, 100), (-1, 100), (4, -1), (-1, -1), (0, 0)):
            batch = _uniform_batch(count, key_len, value_len, stamps)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(record_batch, "_decode_records_at", None)  # the walk would fail
                columns = decode_columns(batch, 0, read_header(batch))
            assert columns.offsets == range(40, 40 + count)
            assert _rows(columns) == [tuple(r) for r in decode_records(batch)]
