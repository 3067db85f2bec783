"""The request path's minimal Redis connection, against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

from app.dispatch.resp import RespConnection, RespPool
from tests.servers import RedisServer


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("resp-redis")), persistent=False).start()
    yield server
    server.stop()


def test_commands_replies_and_errors_in_order(redis: RedisServer) -> None:
    async def go() -> None:
        conn = await RespConnection.open(redis.url, 1.0)
        # several callers share the connection: each gets its own reply, in order
        replies = await asyncio.gather(
            conn.call(1.0, "SET", "k", b"\x00\xff"),
            conn.call(1.0, "GET", "k"),
            conn.call(1.0, "XADD", "s", "*", "f", "v"),
            conn.call(1.0, "XLEN", "s"),
        )
        assert replies[0] == b"OK"
        assert replies[1] == b"\x00\xff"
        assert replies[3] == 1
        with pytest.raises(NoScriptError):
            await conn.call(1.0, "EVALSHA", "0" * 40, 0)
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await conn.call(1.0, "LPUSH", "s", "x")
        assert await conn.call(1.0, "PING") == b"PONG"  # still in step after errors
        conn.close()
        with pytest.raises(ConnectionError):
            await conn.call(1.0, "PING")

    asyncio.run(go())


def test_a_slow_reply_times_out_and_closes_the_connection(redis: RedisServer) -> None:
    async def go() -> None:
        conn = await RespConnection.open(redis.url, 1.0)
        with pytest.raises(TimeoutError):
            await conn.call(0.1, "BLPOP", "nothing", 2)
        assert conn.closed

    asyncio.run(go())


def test_an_unreachable_redis_is_a_connection_error() -> None:
    async def go() -> None:
        with pytest.raises(ConnectionError):
            await RespConnection.open("redis://127.0.0.1:1/0", 0.5)

    asyncio.run(go())


def test_a_pool_bounds_and_reuses_its_connections(redis: RedisServer) -> None:
    async def go() -> None:
        pool = RespPool(redis.url, 1.0, size=4)
        replies = await asyncio.gather(*(pool.call("INCR", "n") for _ in range(50)))
        assert sorted(replies) == list(range(1, 51))
        assert len(pool._idle) <= 4
        with pytest.raises(ResponseError):
            await pool.call("NOSUCHCOMMAND")
        assert await pool.call("GET", "n") == b"50"
        pool.close()

    asyncio.run(go())
