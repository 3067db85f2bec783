"""The Redis Streams protocol shared by the API (producer) and ``ebm worker`` (consumer).

Keys, all under ``EBM_QUEUE_PREFIX`` (default ``ebm``):

- ``{p}:jobs:{model}``: a stream per model; each entry is one job (``job`` = the msgpack
  envelope, ``reply`` = the stream its answer goes to). Workers read it through the consumer
  group ``workers``. Entries are deleted once answered (XACK + XDEL), so its length is the
  model's backlog: queued plus computing jobs.
- ``{p}:dead:{model}``: dead-letter stream of jobs delivered too often without an answer.
- ``{p}:replies:{instance}``: one reply stream per API instance, read by one blocking
  XREAD: one connection for every request in flight, however many.
- ``{p}:workers``: sorted set of worker ids by last heartbeat (Redis clock, ms), and
  ``{p}:worker:{id}`` a hash with each worker's models, device and counters (with a TTL).
- ``{p}:cancel``: pub/sub channel of job ids whose caller went away.
- ``{p}:control``: pub/sub channel of fleet commands (``reload``: load the models again).

Clocks: deadlines travel on the Redis server's clock. Each process measures
``offset = redis TIME - its own time.time()`` (half a round trip off at most) and converts
on the way in and out, so two machines whose clocks disagree by seconds still agree on a
deadline.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError

from app.config import Settings
from app.dispatch.resp import RespConnection, RespPool

GROUP = "workers"
POOL_SIZE = 48  # request-path commands at once per process; waiting for a reply holds none

#: Refuse (return false) instead of adding when the stream already holds ``max`` entries:
#: the backlog is bounded by refusing new work, never by trimming, which would delete jobs
#: that are queued or being computed. Atomic, one round trip.
ENQUEUE_LUA = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return false
end
return redis.call('XADD', KEYS[1], '*', 'job', ARGV[2], 'reply', ARGV[3])
"""


#: A worker's answer, atomically: the reply on the caller's stream (NOMKSTREAM: the stream
#: of a stopped API instance is not re-created), then XACK and XDEL of the job. Redis runs
#: a script as one transaction, like MULTI/EXEC, at half the cost of a redis-py MULTI
#: pipeline (~0.2 ms against ~0.4 ms here). ARGV[1] empty: no reply (nobody waits).
REPLY_LUA = """
if ARGV[1] ~= '' and KEYS[2] ~= '' then
  redis.call('XADD', KEYS[2], 'NOMKSTREAM', '*', 'outcome', ARGV[1])
end
redis.call('XACK', KEYS[1], ARGV[3], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
"""


class Script:
    """A Lua script on the request path (enqueue, reply), run over ``RespPool``
    connections: EVALSHA, falling back to EVAL when Redis does not know the script (it
    restarted). At most POOL_SIZE calls at once."""

    def __init__(self, settings: Settings, source: str) -> None:
        assert settings.redis_url
        self._pool = RespPool(settings.redis_url, settings.redis_timeout_ms / 1000, POOL_SIZE)
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        try:
            return await self._pool.call("EVALSHA", self._sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._pool.call("EVAL", self._source, len(keys), *keys, *args)

    def close(self) -> None:
        self._pool.close()


RELOAD_COMMAND = "reload"

# A worker's heartbeat hash holds, per model version it serves, the seconds per row it
# measured at load: ``row_seconds:<name>/<version>``. The API admits searches with them.
ROW_SECONDS_FIELD = "row_seconds:"


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def jobs(self, model: str) -> str:
        return f"{self.prefix}:jobs:{model}"

    def dead(self, model: str) -> str:
        return f"{self.prefix}:dead:{model}"

    def replies(self, instance: str) -> str:
        return f"{self.prefix}:replies:{instance}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def cancel(self) -> str:
        return f"{self.prefix}:cancel"

    @property
    def control(self) -> str:
        return f"{self.prefix}:control"

    def model_of(self, stream: str) -> str:
        return stream.removeprefix(f"{self.prefix}:jobs:")


def connect(settings: Settings, blocking_s: float = 0.0) -> aioredis.Redis:
    """A client for ``EBM_REDIS_URL``. A client used for blocking reads gets a socket timeout
    above its longest block (redis-py raises a timeout otherwise)."""
    assert settings.redis_url
    timeout = settings.redis_timeout_ms / 1000 + blocking_s
    # A plain pool (redis-py's blocking pool costs ~0.25 ms a command here); the request
    # path's commands (``Script``, ``BlockingReader``) have connections of their own.
    client: aioredis.Redis = aioredis.Redis.from_url(
        settings.redis_url,
        max_connections=POOL_SIZE + 16,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 1.0),
        # One immediate retry replaces a pooled connection that died with a restarted
        # Redis; never redis-py's default backoff, which would hold a request for seconds
        # while Redis is down instead of answering 503.
        retry=Retry(NoBackoff(), 1),
        decode_responses=False,
    )
    return client


async def clock_offset(client: aioredis.Redis) -> float:
    """Redis server time minus this machine's ``time.time()``, in seconds."""
    before = time.time()
    seconds, micros = await client.time()
    after = time.time()
    return seconds + micros / 1e6 - (before + after) / 2


async def ensure_group(client: aioredis.Redis, stream: str) -> None:
    """Create the consumer group (and the stream) unless it exists. From id 0: jobs added
    before the group existed (Redis restarted empty, the API enqueued first) are read too."""
    try:
        await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def is_nogroup(exc: Exception) -> bool:
    return isinstance(exc, ResponseError) and "NOGROUP" in str(exc)


def entry_ms(entry_id: bytes | str) -> int:
    """The Redis-clock time (ms) at which a stream entry was added: its id's first part."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class BlockingReader:
    """A connection of its own for a loop's blocking XREAD/XREADGROUP (on every request's
    critical path: a ``RespConnection``). Raises RedisError like the client; the next call
    reconnects."""

    def __init__(self, settings: Settings, block_s: float) -> None:
        assert settings.redis_url
        self._url = settings.redis_url
        self._timeout_s = settings.redis_timeout_ms / 1000 + block_s
        self._conn: RespConnection | None = None

    async def read(self, *args: Any) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
        """``XREAD``/``XREADGROUP`` arguments; ``[(stream, [(id, fields), ...]), ...]``."""
        if self._conn is None or self._conn.closed:
            self._conn = await RespConnection.open(self._url, min(self._timeout_s, 1.0))
        try:
            reply = await self._conn.call(self._timeout_s, *args)
        except ResponseError:
            raise
        except BaseException:
            self._conn.close()
            self._conn = None
            raise
        if not reply:
            return []
        return [
            (stream, [(entry_id, _pairs(fields)) for entry_id, fields in entries])
            for stream, entries in reply
        ]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _pairs(fields: list[bytes] | None) -> dict[bytes, bytes]:
    if not fields:
        return {}
    return dict(zip(fields[::2], fields[1::2], strict=True))
