"""A minimal Redis connection for the request path: RESP over an asyncio Protocol.

Every request in queue mode crosses Redis four times (enqueue, the worker's read, the
reply, the API's read). Through redis-py's asyncio client each crossing cost ~0.2 ms of
Python here (streams, pool, retry and callback layers), more than the whole embedded
request. This connection writes hiredis-packed commands straight to the transport and
parses replies with hiredis's C parser as bytes arrive: ~30 us a command. It does only
what the hot path needs (one command at a time per caller, replies in order); everything
else (groups, heartbeats, XAUTOCLAIM, pub/sub) uses redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout


def _error(reply: hiredis.ReplyError) -> ResponseError:
    message = str(reply)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class RespConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._transport: Any = None  # asyncio's or uvloop's (not an asyncio.Transport)
        self.closed = False

    @classmethod
    async def open(cls, url: str, connect_timeout_s: float) -> RespConnection:
        options = parse_url(url)
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    cls, options.get("host", "localhost"), options.get("port", 6379)
                ),
                connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"cannot connect to Redis: {exc}") from exc
        if options.get("password"):
            auth = [options["password"]]
            if options.get("username"):
                auth.insert(0, options["username"])
            await conn.call(connect_timeout_s, "AUTH", *auth)
        if options.get("db"):
            await conn.call(connect_timeout_s, "SELECT", options["db"])
        return conn

    # --- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            future = self._pending.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(ConnectionError(f"Redis connection lost: {exc}"))

    # --- commands ---------------------------------------------------------------------
    async def call(self, timeout_s: float, *args: Any) -> Any:
        """One command's reply; ResponseError for an error reply; ConnectionError or
        TimeoutError (the connection is then closed: a late reply would answer the next
        command) when Redis is gone or slower than ``timeout_s``."""
        if self.closed or self._transport is None:
            raise ConnectionError("Redis connection is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        self._transport.write(hiredis.pack_command(args))
        timer = asyncio.get_running_loop().call_later(timeout_s, self._time_out, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _time_out(self, future: asyncio.Future[Any]) -> None:
        if not future.done():
            future.set_exception(RedisTimeout("Redis did not answer in time"))
            self.close()

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class RespPool:
    """Connections for one kind of request-path command, opened on demand; at most
    ``size`` commands at once (a burst waits for a connection instead of failing)."""

    def __init__(self, url: str, timeout_s: float, size: int) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._idle: list[RespConnection] = []
        self._slots = asyncio.Semaphore(size)

    async def call(self, *args: Any, timeout_s: float | None = None) -> Any:
        async with self._slots:
            conn = None
            while self._idle and conn is None:
                candidate = self._idle.pop()
                conn = None if candidate.closed else candidate
            if conn is None:
                conn = await RespConnection.open(self._url, min(self._timeout_s, 1.0))
            try:
                reply = await conn.call(timeout_s or self._timeout_s, *args)
            except ResponseError:
                self._idle.append(conn)  # an error reply: the connection is fine
                raise
            except BaseException:
                conn.close()
                raise
            self._idle.append(conn)
            return reply

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
