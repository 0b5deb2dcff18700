"""``LogChunk.keys``: the lines' sort keys the ingress sends with a chunk, so the log service need
not parse every line's timestamp; and the log service's own computation for records without them."""

from __future__ import annotations

from datetime import datetime, timezone

import orjson

from runledger.messages.logs import LogChunk, LogLimits, line_keys, validate_batch

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
RECORDS = [
    {"flow_run_id": "r", "message": "z", "timestamp": "2026-05-01T10:00:00.123456Z", "level": "DEBUG"},
    {"flow_run_id": "r", "message": "offset", "timestamp": "2026-05-01T12:00:00.5+02:00", "level": "warn"},
    {"flow_run_id": "r", "message": "epoch", "timestamp": 1714557600.25, "level": 50},
    {"flow_run_id": "r", "message": "no zone", "timestamp": "2026-05-01T10:00:00", "level": "ERROR"},
    {"flow_run_id": "r", "message": "agent line: the server's time, INFO"},
    {"flow_run_id": "r", "message": "before 1970", "timestamp": "1960-01-01T00:00:00Z", "level": "CRITICAL"},
]


def ingress_keys(records: list[dict]) -> tuple[list[dict], str]:
    """The lines as the ingress puts them on the topic, and their keys as it computes them: from
    the validated timestamps and levels, not from the lines' text."""
    lines = validate_batch(records, LogLimits(), NOW).lines
    return [orjson.loads(line.encoded) for line in lines], "".join(line.sort_key() for line in lines)


def test_the_log_service_computes_the_keys_the_ingress_sends():
    wire, keys = ingress_keys(RECORDS)
    assert len(keys) == 17 * len(RECORDS)
    assert line_keys(wire) == keys


def test_lines_the_ingress_never_writes_get_zero_timestamps_and_info_as_before():
    odd = [{"message": "no timestamp"}, {"timestamp": "yesterday", "level": "LOUD"}, {"timestamp": 5, "level": ["INFO"]}]
    assert line_keys(odd) == ("0" * 16 + "I") * 3


def test_keys_round_trip_and_a_chunk_without_them_decodes_as_before():
    wire, keys = ingress_keys(RECORDS)
    chunk = LogChunk.decode(LogChunk(flow_run_id="r", lines=wire, keys=keys).encode())
    assert chunk.keys == keys and chunk.lines == wire
    old = LogChunk.decode(LogChunk(flow_run_id="r", lines=wire).encode())
    assert old.keys is None and b'"keys"' not in LogChunk(flow_run_id="r", lines=wire).encode()


def test_malformed_keys_are_dropped_and_the_lines_kept():
    wire, keys = ingress_keys(RECORDS)
    for bad in (keys[:-1], keys + "0" * 17, 17, ["x"], "", keys.replace("I", "X"), keys.replace("0", "٠"),  # an Arabic-Indic zero
                keys[1:] + keys[0]):  # right length, a level code out of place
        raw = orjson.dumps({"flow_run_id": "r", "lines": wire, "keys": bad})
        chunk = LogChunk.decode(raw)
        assert chunk.keys is None and len(chunk.lines) == len(RECORDS), bad
    assert LogChunk.decode(orjson.dumps({"flow_run_id": "r", "lines": [], "keys": ""})).keys == ""
