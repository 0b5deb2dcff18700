"""Log records (pure): validation by index and field, defaults, limits, and the chunks put on the
logs topic."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from runledger.messages.logs import FIELD_SET, LEVELS, BatchTooLarge, _checked_line, _plainly_valid, LogChunk, LogLimits, batch_key, chunks, content_key, parse_time, timestamp_key, validate_batch

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def errors_of(records, limits=LogLimits()):
    return {(e.index, e.field): e.msg for e in validate_batch(records, limits, NOW).errors}


def test_defaults_timestamp_now_and_level_info():
    (line,) = validate_batch([{"flow_run_id": "r", "message": "m"}], LogLimits(), NOW).lines
    assert line.timestamp == NOW and line.level == "INFO" and line.name == "" and line.task_run_id is None


def test_one_object_is_a_batch_of_one():
    assert len(validate_batch({"flow_run_id": "r", "message": "m"}, LogLimits(), NOW).lines) == 1


@pytest.mark.parametrize(
    "record, field",
    [
        ({"message": "m"}, "flow_run_id"),
        ({"flow_run_id": "r"}, "message"),
        ({"flow_run_id": "r", "message": 5}, "message"),
        ({"flow_run_id": "r", "message": "m", "level": "LOUD"}, "level"),
        ({"flow_run_id": "r", "message": "m", "timestamp": "soon"}, "timestamp"),
        ({"flow_run_id": "r", "message": "m", "colour": "red"}, "colour"),
        ({"flow_run_id": "r", "message": "m", "task_run_id": 3}, "task_run_id"),
    ],
)
def test_an_invalid_record_is_refused_by_index_and_field_the_others_kept(record, field):
    batch = validate_batch([{"flow_run_id": "r", "message": "ok"}, record], LogLimits(), NOW)
    assert [l.message for l in batch.lines] == ["ok"]
    assert (1, field) in {(e.index, e.field) for e in batch.errors}
    assert batch.errors[0].as_dict()["loc"][:3] == ["body", "logs", 1]


def test_levels_accept_python_names_and_numbers():
    batch = validate_batch([{"flow_run_id": "r", "message": "m", "level": v} for v in ("warn", "error", 50, "FATAL")], LogLimits(), NOW)
    assert [l.level for l in batch.lines] == ["WARNING", "ERROR", "CRITICAL", "CRITICAL"]


def test_timestamps_keep_their_instant():
    assert parse_time("2024-05-01T12:00:00+02:00") == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)
    assert parse_time("2024-05-01T10:00:00") == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)  # no zone = UTC
    assert parse_time("2024-05-01T10:00:00Z") == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)


def test_message_limit_is_named():
    msg = errors_of([{"flow_run_id": "r", "message": "x" * 11}], LogLimits(max_message_bytes=10))[(0, "message")]
    assert msg == "message of 11 bytes is over the limit of 10 bytes"


def test_batch_limits_refuse_the_whole_batch():
    with pytest.raises(BatchTooLarge, match="3 records is over the limit of 2"):
        validate_batch([{"flow_run_id": "r", "message": "m"}] * 3, LogLimits(max_records=2), NOW)
    lines = validate_batch([{"flow_run_id": "r", "message": "m" * 100}] * 5, LogLimits(), NOW).lines
    with pytest.raises(BatchTooLarge, match="over the limit of 300 bytes"):
        chunks(lines, LogLimits(max_batch_bytes=300))


def test_chunks_are_per_run_in_order_and_bounded():
    records = [{"flow_run_id": "a" if i % 3 else "b", "message": f"m{i}" + "x" * 50} for i in range(30)]
    lines = validate_batch(records, LogLimits(), NOW).lines
    parts, total = chunks(lines, LogLimits(chunk_bytes=500))
    assert total == sum(len(l.encoded) for l in lines)
    decoded = [(run, LogChunk.decode(value)) for run, value in parts]
    assert all(run == chunk.flow_run_id for run, chunk in decoded)
    for run in ("a", "b"):
        got = [line["message"] for r, c in decoded if r == run for line in c.lines]
        assert got == [r["message"] for r in records if r["flow_run_id"] == run]
    assert all(len(value) < 500 + 200 for _, value in parts) and len(parts) > 2


def test_chunks_of_a_keyed_batch_are_named_by_key_and_first_record_the_same_way_each_time():
    records = [{"flow_run_id": "a" if i % 3 else "b", "message": f"m{i}" + "x" * 50} for i in range(30)]
    lines = validate_batch(records, LogLimits(), NOW).lines
    parts, _ = chunks(lines, LogLimits(chunk_bytes=500), key="K", sent_ms=1234)
    decoded = [LogChunk.decode(value) for _, value in parts]
    names = [c.batch for c in decoded]
    assert len(set(names)) == len(names) and all(c.sent_ms == 1234 for c in decoded)
    for c in decoded:  # each chunk is named after the batch index of its first record
        first = next(i for i, r in enumerate(records) if r["message"] == c.lines[0]["message"])
        assert c.batch == f"K#{first}"
    again, _ = chunks(validate_batch(records, LogLimits(), NOW).lines, LogLimits(chunk_bytes=500), key="K", sent_ms=9999)
    assert [LogChunk.decode(v).batch for _, v in again] == names
    unkeyed = LogChunk.decode(chunks(lines, LogLimits())[0][0][1])
    assert unkeyed.batch is None and unkeyed.sent_ms is None


def test_batch_key_is_an_optional_string_of_1_to_500_characters():
    assert batch_key(None) is None and batch_key("k") == "k" and batch_key("x" * 500) == "x" * 500
    for bad in ("", "x" * 501, 3, True, ["k"]):
        with pytest.raises(ValueError):
            batch_key(bad)


def test_content_key_only_when_every_record_has_a_timestamp():
    a = {"flow_run_id": "r", "message": "m", "timestamp": "2024-05-01T10:00:00.5Z"}
    b = {"flow_run_id": "r", "message": "n", "timestamp": 1714557600.25}

    def key(records):
        return content_key(records, validate_batch(records, LogLimits(), NOW))

    assert key([a, b]) == key([dict(reversed(a.items())), b])  # key order does not matter
    assert key([a, b]) == key([{**a, "timestamp": "2024-05-01T12:00:00.500+02:00"}, b])  # nor how the instant is written
    assert key([a, b]) != key([b, a]) and key(a) == key([a])
    assert key([a, {**b, "level": "LOUD"}]) != key([a])  # a refused record still makes it another batch
    assert key([a, {"flow_run_id": "r", "message": "n"}]) is None and key([]) is None
    assert content_key("nonsense", validate_batch([], LogLimits(), NOW)) is None


def test_a_line_is_stored_as_utc_iso_with_its_sort_key():
    (line,) = validate_batch([{"flow_run_id": "r", "message": "m", "level": "warn", "timestamp": "2024-05-01T12:00:00.25+02:00"}], LogLimits(), NOW).lines
    assert orjson.loads(line.encoded) == {"task_run_id": None, "timestamp": "2024-05-01T10:00:00.250000Z", "level": "WARNING",
                                            "name": "", "message": "m", "info": None}
    (whole,) = validate_batch([{"flow_run_id": "r", "message": "m", "timestamp": "2024-05-01T10:00:00Z"}], LogLimits(), NOW).lines
    assert orjson.loads(whole.encoded)["timestamp"] == "2024-05-01T10:00:00Z"
    assert line.sort_key() == f"{1714557600250000:016d}W"
    info = {"k": [1, 2.5, None], "s": "é\n"}
    (with_info,) = validate_batch([{"flow_run_id": "r", "message": "m", "info": info}], LogLimits(), NOW).lines
    assert orjson.loads(with_info.encoded)["info"] == info and b'"info":' + orjson.dumps(info) + b"}" in with_info.encoded
    assert timestamp_key(datetime(1960, 1, 1, tzinfo=timezone.utc)) == "0" * 16  # clamped


def test_chunks_carry_their_lines_sort_keys():
    records = [{"flow_run_id": "r", "message": f"m{i}", "level": "ERROR", "timestamp": 1714557600 + i} for i in range(3)]
    lines = validate_batch(records, LogLimits(), NOW).lines
    (run, value), = chunks(lines, LogLimits())[0]
    assert orjson.loads(value)["keys"] == "".join(f"{(1714557600 + i) * 10**6:016d}E" for i in range(3))


def test_end_marker_round_trips_and_garbage_is_refused():
    assert LogChunk.decode(LogChunk(flow_run_id="r", end=3).encode()).end == 3
    for raw in (b"[]", b'{"lines": []}', b'{"flow_run_id": "r", "lines": [1]}', b'{"flow_run_id": "r", "end": "x"}',
                b'{"flow_run_id": "r", "batch": 5, "sent_ms": 1}', b'{"flow_run_id": "r", "batch": "k"}'):
        with pytest.raises(ValueError):
            LogChunk.decode(raw)


_TEXT = st.text(st.characters(codec="utf-8"), max_size=60) | st.sampled_from(["", " ", "\t\n", "r", "é" * 12])
_TIMES = st.sampled_from(["2024-05-01T12:00:00.25+02:00", "2024-05-01T10:00:00Z", "2024-05-01T10:00:00", " 2024-05-01T10:00:00z",
                          "0001-01-01T00:00:00+01:00", "soon", "", 1714557600.25, 0, True])
_VALUES = st.none() | _TEXT | st.integers(-5, 60) | st.booleans() | st.lists(st.integers(), max_size=3) | st.dictionaries(_TEXT, st.integers(), max_size=3)
_RECORDS = st.dictionaries(st.sampled_from([*FIELD_SET, "colour"]), _VALUES, max_size=8) | st.fixed_dictionaries(
    {"flow_run_id": _TEXT, "message": _TEXT},
    optional={"task_run_id": _TEXT | st.none(), "name": _TEXT | st.none(), "timestamp": _TIMES | st.none(),
              "level": st.sampled_from([*LEVELS, "warn", "LOUD", 20, None]), "info": _VALUES},
)


@settings(max_examples=600, deadline=None)
@given(record=_RECORDS, i=st.integers(0, 5))
def test_the_fast_path_accepts_only_what_the_full_check_accepts_and_makes_the_same_line(record, i):
    limits = LogLimits(max_message_bytes=40, max_name_bytes=24, max_info_bytes=20)  # small: lengths cross them
    fast = _plainly_valid(record, i, NOW, limits.max_message_bytes // 4, limits.max_name_bytes // 4, limits.max_info_bytes)
    errors: list = []
    full = _checked_line(record, i, limits, NOW, errors)
    if fast is not None:
        assert full is not None and not errors
        assert (fast.flow_run_id, fast.index, fast.encoded, fast.sort_key()) == (full.flow_run_id, full.index, full.encoded, full.sort_key())
        assert (fast.task_run_id, fast.timestamp, fast.level, fast.name, fast.message) == (full.task_run_id, full.timestamp, full.level, full.name, full.message)
