"""The log store in Redis: per flow run, a timeline (a Redis stream: state changes, log lines and
the end marker, in arrival order; its entry ids are the watch stream's event ids) and an index of
the lines (a sorted set, every score 0, ordered by member: timestamp, then arrival).

Keys (every key of one run shares the hash tag ``{<flow_run_id>}``, so each Lua script touches
one hash slot; Redis-Cluster safe):

- ``{p}:logs:{<run>}:tl``   stream; entry fields ``k`` (``l`` line, ``s`` state, ``e`` end) and ``d`` (JSON)
- ``{p}:logs:{<run>}:ix``   sorted set of ``<16-digit µs timestamp><13-digit ms>-<6-digit seq><level code>``
                            (the middle part is the line's stream id, zero-padded)
- ``{p}:logs:{<run>}:bk``   sorted set of the keyed batch chunks applied (``<key>#<first record>``, by
                            sent time, ms): a re-sent keyed batch is dropped (``messages.logs``)
- ``{p}:logs:{<run>}:meta`` hash: ``lo``/``eo`` = the last logs/events offset applied for this run
                            (a redelivered record at or below it is a no-op), ``exp`` (when the
                            run's logs expire), ``ended`` (version the end marker was written for)
- ``{p}:logs:cp:<topic>:<partition>`` the service's position (replay from here on restart)
- ``{p}:logs:pending_end`` sorted set ``<run>:<version>`` by due time (ms): end markers to send

Retention: when a run finishes, its keys get an absolute expiry (finish time + retention) and
lines that arrive later keep it; a restarted run loses it. A cap per run removes the oldest lines
(by timestamp) past ``max_lines_per_run``. The store is derived: deleting ``{p}:logs:*`` and
restarting the log service rebuilds it from the topics (within their retention).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime

import orjson

from runledger.services.runtime import redis as redis_clients
from runledger.messages.logs import BATCH_KEY_SECONDS, BATCH_KEYS_PER_RUN, LEVEL_CODE, MAX_US, line_keys, micros

# KEYS: tl, ix, meta, bk. ARGV: offset, cap, n, batch ('' = none), sent ms, keep ms, keep count,
# the n lines' JSON joined by newlines, their sort keys (n × 17 characters: ts16 .. level code).
# Returns the lines added; -1 for a repeated batch. Two blobs rather than arguments per line: the
# log service and Redis pay per argument (packing, parsing); one ZADD of all the members likewise.
_WRITE_LINES = """
local off = tonumber(ARGV[1])
local lo = tonumber(redis.call('HGET', KEYS[3], 'lo') or '-1')
if off <= lo then return 0 end
local exp = redis.call('HGET', KEYS[3], 'exp')
if ARGV[4] ~= '' then
  local sent = tonumber(ARGV[5])
  local repeated = redis.call('ZSCORE', KEYS[4], ARGV[4])
  redis.call('ZADD', KEYS[4], 'GT', sent, ARGV[4])  -- adds it, or refreshes a repeat
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. (sent - tonumber(ARGV[6])))
  local kept = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[7])
  if kept > 0 then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, kept - 1) end
  if exp then redis.call('PEXPIREAT', KEYS[4], exp) end
  if repeated then
    redis.call('HSET', KEYS[3], 'lo', ARGV[1])
    return -1
  end
end
local n = tonumber(ARGV[3])
local lines, keys = ARGV[8], ARGV[9]
local members = {}
local start = 1
for i = 1, n do
  local stop = string.find(lines, '\\n', start, true)
  local id = redis.call('XADD', KEYS[1], '*', 'k', 'l', 'd', string.sub(lines, start, stop and stop - 1 or -1))
  if stop then start = stop + 1 end
  local dash = string.find(id, '-', 1, true)
  local ms = string.sub(id, 1, dash - 1)
  local sq = string.sub(id, dash + 1)
  local k = i * 17
  members[2 * i - 1] = 0
  members[2 * i] = string.sub(keys, k - 16, k - 1) .. string.rep('0', 13 - #ms) .. ms .. '-' .. string.rep('0', 6 - #sq) .. sq .. string.sub(keys, k, k)
end
for i = 1, 2 * n, 2000 do  -- unpack's limit is ~8,000 values
  redis.call('ZADD', KEYS[2], unpack(members, i, math.min(i + 1999, 2 * n)))
end
redis.call('HSET', KEYS[3], 'lo', ARGV[1])
local cap = tonumber(ARGV[2])
local count = redis.call('ZCARD', KEYS[2])
if count > cap then
  local old = redis.call('ZRANGE', KEYS[2], 0, count - cap - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, count - cap - 1)
  for _, m in ipairs(old) do
    local ms = string.match(string.sub(m, 17, 29), '^0*(%d+)$')
    local sq = string.match(string.sub(m, 31, 36), '^0*(%d+)$')
    redis.call('XDEL', KEYS[1], ms .. '-' .. sq)
  end
end
if exp then
  redis.call('PEXPIREAT', KEYS[1], exp)
  redis.call('PEXPIREAT', KEYS[2], exp)
  redis.call('PEXPIREAT', KEYS[3], exp)
end
return n
"""

# KEYS: tl, ix, meta, bk. ARGV: offset, json, finished (0/1), expiry ms ('' = none), state type.
_WRITE_STATE = """
local off = tonumber(ARGV[1])
local eo = tonumber(redis.call('HGET', KEYS[3], 'eo') or '-1')
if off <= eo then return 0 end
redis.call('XADD', KEYS[1], '*', 'k', 's', 'd', ARGV[2])
redis.call('HSET', KEYS[3], 'eo', ARGV[1], 'st', ARGV[5])
if ARGV[3] == '1' then
  if ARGV[4] ~= '' then
    redis.call('HSET', KEYS[3], 'exp', ARGV[4])
    for i = 1, 4 do redis.call('PEXPIREAT', KEYS[i], ARGV[4]) end
  end
else
  if redis.call('HDEL', KEYS[3], 'exp') == 1 then
    for i = 1, 4 do redis.call('PERSIST', KEYS[i]) end
  end
end
return 1
"""

# KEYS: tl, meta. ARGV: offset, version.
_WRITE_END = """
local off = tonumber(ARGV[1])
local lo = tonumber(redis.call('HGET', KEYS[2], 'lo') or '-1')
if off <= lo then return 0 end
redis.call('HSET', KEYS[2], 'lo', ARGV[1])
if redis.call('HGET', KEYS[2], 'ended') == ARGV[2] then return 0 end
redis.call('XADD', KEYS[1], '*', 'k', 'e', 'd', '{"version":' .. ARGV[2] .. '}')
redis.call('HSET', KEYS[2], 'ended', ARGV[2])
local exp = redis.call('HGET', KEYS[2], 'exp')
if exp then redis.call('PEXPIREAT', KEYS[1], exp) end
return 1
"""

# KEYS: ix, tl. ARGV: min, max (lex bounds), limit, level codes ('' = all), task needle ('' = all),
# reverse (0/1), scan budget. Returns {member1, id1, json1, ..., next} where next is the last
# member looked at when the page is full or the budget ran out, '' when the range is exhausted.
_QUERY = """
local lo, hi = ARGV[1], ARGV[2]
local limit = tonumber(ARGV[3])
local levels, needle, rev = ARGV[4], ARGV[5], ARGV[6] == '1'
local budget = tonumber(ARGV[7])
local out, found, scanned, last = {}, 0, 0, ''
local chunk = math.max(limit, 100)
while true do
  local batch
  if rev then
    batch = redis.call('ZRANGE', KEYS[1], hi, lo, 'BYLEX', 'REV', 'LIMIT', 0, chunk)
  else
    batch = redis.call('ZRANGE', KEYS[1], lo, hi, 'BYLEX', 'LIMIT', 0, chunk)
  end
  if #batch == 0 then return {out, ''} end
  for _, m in ipairs(batch) do
    scanned = scanned + 1
    last = m
    if levels == '' or string.find(levels, string.sub(m, 37, 37), 1, true) then
      local ms = string.match(string.sub(m, 17, 29), '^0*(%d+)$')
      local sq = string.match(string.sub(m, 31, 36), '^0*(%d+)$')
      local id = ms .. '-' .. sq
      local e = redis.call('XRANGE', KEYS[2], id, id)
      if e[1] then
        local d = e[1][2][4]
        if needle == '' or string.find(d, needle, 1, true) then
          table.insert(out, m)
          table.insert(out, id)
          table.insert(out, d)
          found = found + 1
          if found >= limit then return {out, m} end
        end
      end
    end
    if scanned >= budget then return {out, m} end
  end
  if #batch < chunk then return {out, ''} end
  if rev then hi = '(' .. last else lo = '(' .. last end
end
"""

# KEYS: pending_end. ARGV: now ms, max. Due entries (removal is separate: after the marker is durable).
_DUE = """
return redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
"""


# Above every member: members start with 16 digits, then a digit ('~' sorts after digits).
_PAST_THE_END = "(" + "9" * 16 + "~"


def _bound(t: datetime | None, inclusive: bool, upper: bool) -> str:
    if t is None:
        return "+" if upper else "-"
    us = min(max(micros(t), 0), MAX_US)
    if upper:  # members of timestamp us start with that 16-digit prefix
        if inclusive:
            return f"({us + 1:016d}" if us < MAX_US else "+"
        return f"({us:016d}"
    if inclusive:
        return f"[{us:016d}"
    return f"[{us + 1:016d}" if us < MAX_US else _PAST_THE_END


def encode_cursor(member: str) -> str:
    return base64.urlsafe_b64encode(member.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    if len(raw) != 37 or not raw[:36].replace("-", "").isdigit():
        raise ValueError("not a cursor of this API")
    return raw


@dataclass
class Page:
    lines: list[dict]
    next_cursor: str | None


# A consumer's saved position, set by a script like the writes queued before it: when Redis has
# lost its scripts (a restart that kept the data, SCRIPT FLUSH) every write of the pipeline fails
# with NOSCRIPT, and so does this, so the position never moves past lines that were not written.
_SAVE_POSITION = "redis.call('SET', KEYS[1], ARGV[1])"


class LogStore:
    def __init__(self, redis: redis_clients.AsyncRedis, prefix: str = "rl") -> None:
        self.redis = redis
        self.base = f"{prefix}:logs"
        self._lines = redis.register_script(_WRITE_LINES)
        self._state = redis.register_script(_WRITE_STATE)
        self._end = redis.register_script(_WRITE_END)
        self._query = redis.register_script(_QUERY)
        self._due = redis.register_script(_DUE)
        self._position = redis.register_script(_SAVE_POSITION)

    # -- keys ---------------------------------------------------------------------------------
    def timeline_key(self, run_id: str) -> str:
        return f"{self.base}:{{{run_id}}}:tl"

    def index_key(self, run_id: str) -> str:
        return f"{self.base}:{{{run_id}}}:ix"

    def meta_key(self, run_id: str) -> str:
        return f"{self.base}:{{{run_id}}}:meta"

    def batches_key(self, run_id: str) -> str:
        return f"{self.base}:{{{run_id}}}:bk"

    def checkpoint_key(self, topic: str, partition: int) -> str:
        return f"{self.base}:cp:{topic}:{partition}"

    @property
    def pending_end_key(self) -> str:
        return f"{self.base}:pending_end"

    @property
    def pattern(self) -> str:
        return f"{self.base}:*"

    # -- writes (the log service) -------------------------------------------------------------
    def queue_lines(self, pipe, run_id: str, offset: int, lines: list[dict], cap: int,
                    batch: str | None = None, sent_ms: int | None = None, keys: str | None = None) -> None:
        """Queue the lines of one logs record on ``pipe``: applied at most once per run and offset,
        and, for a chunk of a keyed batch (``batch``), at most once per run and batch. ``keys``: the
        lines' sort keys as ``LogChunk.keys`` has them; computed from the lines when None."""
        # compact JSON never holds a raw newline (JSON escapes it in strings): a safe separator
        blob = b"\n".join(map(orjson.dumps, lines))
        args = [offset, cap, len(lines), batch or "", sent_ms or 0, BATCH_KEY_SECONDS * 1000, BATCH_KEYS_PER_RUN,
                blob, keys if keys is not None else line_keys(lines)]
        redis_keys = [self.timeline_key(run_id), self.index_key(run_id), self.meta_key(run_id), self.batches_key(run_id)]
        pipe.evalsha(self._lines.sha, 4, *redis_keys, *args)

    def queue_end(self, pipe, run_id: str, offset: int, version: int) -> None:
        pipe.evalsha(self._end.sha, 2, self.timeline_key(run_id), self.meta_key(run_id), offset, version)

    def queue_state(self, pipe, run_id: str, offset: int, entry: dict, finished: bool, expire_at_ms: int | None) -> None:
        keys = [self.timeline_key(run_id), self.index_key(run_id), self.meta_key(run_id), self.batches_key(run_id)]
        args = [offset, orjson.dumps(entry), "1" if finished else "0", "" if expire_at_ms is None else int(expire_at_ms), entry["type"]]
        pipe.evalsha(self._state.sha, 4, *keys, *args)

    def queue_checkpoint(self, pipe, topic: str, partition: int, position: int) -> None:
        pipe.evalsha(self._position.sha, 1, self.checkpoint_key(topic, partition), position)

    async def ensure_scripts(self) -> None:
        for script in (self._lines, self._state, self._end, self._query, self._due, self._position):
            await self.redis.script_load(script.script)

    async def checkpoints(self, tps: list) -> dict:
        """The saved position of each ``(topic, partition)`` (0 when none), keyed as given."""
        if not tps:
            return {}
        values = await redis_clients.mget(self.redis, [self.checkpoint_key(topic, p) for topic, p in tps])  # any slots
        return {tp: int(v) if v is not None else 0 for tp, v in zip(tps, values)}

    async def add_pending_end(self, run_id: str, version: int, due_ms: int) -> None:
        await self.redis.zadd(self.pending_end_key, {f"{run_id}:{version}": due_ms})

    async def due_ends(self, now_ms: int, limit: int = 500) -> list[tuple[str, int]]:
        raw = await self._due(keys=[self.pending_end_key], args=[now_ms, limit])
        out = []
        for member in raw:
            run_id, _, version = member.decode().rpartition(":")
            out.append((run_id, int(version)))
        return out

    async def remove_pending_ends(self, items: list[tuple[str, int]]) -> None:
        if items:
            await self.redis.zrem(self.pending_end_key, *[f"{r}:{v}" for r, v in items])

    # -- reads (the ingress) ------------------------------------------------------------------
    async def query(
        self,
        run_id: str,
        *,
        task_run_id: str | None = None,
        levels: list[str] | None = None,
        after: datetime | None = None,
        after_inclusive: bool = False,
        before: datetime | None = None,
        before_inclusive: bool = True,
        descending: bool = False,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> Page:
        lo = _bound(after, after_inclusive, upper=False)
        hi = _bound(before, before_inclusive, upper=True)
        if cursor is not None:
            member = decode_cursor(cursor)
            if descending:
                hi = min(hi, "(" + member, key=_lex_order) if hi != "+" else "(" + member
            else:
                lo = max(lo, "(" + member, key=_lex_order) if lo != "-" else "(" + member
        codes = "".join(LEVEL_CODE[level] for level in levels) if levels else ""
        needle = f'"task_run_id":{orjson.dumps(task_run_id).decode()}' if task_run_id else ""
        lines: list[dict] = []
        next_member: str | None = None
        while len(lines) < limit:
            raw, last = await self._query(
                keys=[self.index_key(run_id), self.timeline_key(run_id)],
                args=[lo, hi, limit - len(lines), codes, needle, "1" if descending else "0", max(2000, 20 * limit)],
            )
            for i in range(0, len(raw), 3):
                line = orjson.loads(raw[i + 2])
                lines.append({"id": raw[i + 1].decode(), "flow_run_id": run_id, **line})
            last = last.decode() if isinstance(last, bytes) else last
            if not last:
                next_member = None
                break
            next_member = last
            if descending:
                hi = "(" + last
            else:
                lo = "(" + last
        return Page(lines, encode_cursor(next_member) if next_member and len(lines) >= limit else None)

    async def timeline(self, run_id: str, after: str | None, count: int = 1000) -> list[tuple[str, dict]]:
        """Entries after stream id ``after`` (None: from the start), oldest first."""
        start = f"({after}" if after else "-"
        raw = await self.redis.xrange(self.timeline_key(run_id), min=start, max="+", count=count)
        return [(i.decode(), fields) for i, fields in raw]

    async def last_timeline_id(self, run_id: str) -> str:
        raw = await self.redis.xrevrange(self.timeline_key(run_id), max="+", min="-", count=1)
        return raw[0][0].decode() if raw else "0-0"

    async def count_lines(self, run_id: str) -> int:
        return await self.redis.zcard(self.index_key(run_id))


def _lex_order(bound: str) -> str:
    return bound[1:]


def entry_view(entry_id: str, fields: dict) -> tuple[str, dict]:
    """A timeline entry as (kind, data): kind ``log``, ``state`` or ``end``."""
    kind = {b"l": "log", b"s": "state", b"e": "end"}.get(fields.get(b"k"), "log")
    data = orjson.loads(fields.get(b"d") or b"{}")
    return kind, data


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
