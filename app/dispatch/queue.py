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

Clocks: deadlines travel on the Redis server's clock. Each process measures
``offset = redis TIME - its own time.time()`` (half a round trip off at most) and converts
on the way in and out, so two machines whose clocks disagree by seconds still agree on a
deadline.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from app.config import Settings

GROUP = "workers"
POOL_SIZE = 32  # connections per client; commands are short, replies need none held

#: Refuse (return false) instead of adding when the stream already holds ``max`` entries:
#: the backlog is bounded by refusing new work, never by trimming, which would delete jobs
#: that are queued or being computed. Atomic, one round trip.
ENQUEUE_LUA = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return false
end
return redis.call('XADD', KEYS[1], '*', 'job', ARGV[2], 'reply', ARGV[3])
"""


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

    def model_of(self, stream: str) -> str:
        return stream.removeprefix(f"{self.prefix}:jobs:")


def connect(settings: Settings, blocking_s: float = 0.0) -> aioredis.Redis:
    """A client for ``EBM_REDIS_URL``. A client used for blocking reads gets a socket timeout
    above its longest block (redis-py raises a timeout otherwise)."""
    assert settings.redis_url
    timeout = settings.redis_timeout_ms / 1000 + blocking_s
    # A bounded pool that makes a command wait for a free connection (up to the socket
    # timeout) rather than fail: a burst of requests shares POOL_SIZE connections.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=POOL_SIZE,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 1.0),
        # One immediate retry replaces a pooled connection that died with a restarted
        # Redis; never redis-py's default backoff, which would hold a request for seconds
        # while Redis is down instead of answering 503.
        retry=Retry(NoBackoff(), 1),
        decode_responses=False,
    )
    return aioredis.Redis(connection_pool=pool)


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
