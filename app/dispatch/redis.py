"""Queue-mode dispatcher: the API enqueues envelopes on Redis Streams and waits for replies.

The API process holds manifests only. ``submit`` adds the job to its model's stream
(refused with 429 when the backlog is full), then waits on a future that this instance's
reply reader resolves when a worker's reply arrives on the instance's reply stream. A
reply for a job nobody waits for (a duplicate from an at-least-once redelivery, or a job
whose caller gave up) is dropped: replies are de-duplicated by job id.

Failure behaviour:
- Redis unreachable when a job is submitted: 503 ``queue_unavailable`` with Retry-After,
  within the client's socket timeouts (never a hang to the deadline).
- Redis goes away while jobs are in flight: they keep waiting (to their deadline). With
  AOF persistence Redis comes back with every job and reply, and they complete. If it
  comes back empty (no persistence: this instance's reply stream is gone), every job in
  flight is failed with 503 at once: its entry is lost and retrying is safe.
- The client disconnects: the job's entry is deleted if still queued, and the job id is
  published on the cancel channel so the worker computing it stops within one step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from app.config import Settings
from app.dispatch.drain import DrainRate
from app.dispatch.queue import (
    ENQUEUE_LUA,
    RELOAD_COMMAND,
    ROW_SECONDS_FIELD,
    BlockingReader,
    Keys,
    Script,
    clock_offset,
    connect,
    text,
)
from app.dispatch.wire import Envelope, Result, decode_outcome, encode_envelope
from app.errors import DeadlineExceeded, EBMError, Overloaded, QueueUnavailable
from app.inference.control import seconds_left
from app.registry.loader import Catalog

log = logging.getLogger("ebm.redis")

REPLY_BLOCK_S = 1.0  # one blocking read of the reply stream; the loop re-checks health
REPLY_TTL_S = 120  # a dead instance's reply stream disappears this long after it stops


@dataclass
class _Waiting:
    future: asyncio.Future[Result]
    entry_id: bytes | None = None
    stream: str = ""


class RedisDispatcher:
    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self._settings = settings
        self._catalog = catalog
        self.keys = Keys(settings.queue_prefix)
        self.instance = uuid.uuid4().hex[:16]
        self.reply_stream = self.keys.replies(self.instance)
        self._client = connect(settings)
        self._reader = BlockingReader(settings, REPLY_BLOCK_S)
        self._enqueue = Script(settings, ENQUEUE_LUA)
        self._waiting: dict[str, _Waiting] = {}
        self._offset = 0.0
        self._last_reply_id = b"0-0"
        self._drain = DrainRate()
        self._tasks: list[asyncio.Task[None]] = []
        self._redis_ok = False
        self._preparing = asyncio.Lock()
        self._closed = False
        self.duplicates = 0
        self._row_seconds: dict[str, float] = {}  # "name/version" -> seconds per row

    # --- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Start reading replies. Redis may be down now: the loops retry until it is up."""
        with contextlib.suppress(RedisError, OSError):
            await self._prepare()
            await self._refresh_row_seconds()
        self._tasks = [
            asyncio.create_task(self._read_replies(), name="ebm-replies"),
            asyncio.create_task(self._heartbeat(), name="ebm-api-heartbeat"),
        ]

    async def _prepare(self) -> None:
        """Make sure this instance's reply stream exists, refresh its TTL and the clock
        offset. Returns after one round of commands; raises RedisError when Redis is down."""
        async with self._preparing:  # the reader, the heartbeat and submit may all try
            await self._prepare_once()

    async def _prepare_once(self) -> None:
        self._offset = await clock_offset(self._client)
        if not await self._client.exists(self.reply_stream):
            # An empty stream: a placeholder entry creates it, then it is trimmed away.
            first: Any = await self._client.xadd(self.reply_stream, {"hello": self.instance})
            await self._client.xdel(self.reply_stream, first)
            if self._redis_ok or self._last_reply_id != b"0-0":
                self._lost_everything()
            self._last_reply_id = first
        await self._client.expire(self.reply_stream, REPLY_TTL_S)
        self._redis_ok = True

    def _lost_everything(self) -> None:
        """Redis came back without this instance's reply stream: it restarted empty, so
        every job in flight is gone. Fail them now (retrying is safe) instead of at their
        deadline."""
        lost = [w for w in self._waiting.values() if not w.future.done()]
        for waiting in lost:
            waiting.future.set_exception(
                QueueUnavailable(
                    "Redis restarted without its data while this job was queued or "
                    "computing; the job was lost, retry it"
                )
            )
        if lost:
            log.warning("Redis restarted empty: %d job(s) in flight failed with 503", len(lost))

    async def announce_reload(self) -> int | None:
        listeners: int = await self._client.publish(self.keys.control, RELOAD_COMMAND)
        return listeners

    async def close(self) -> None:
        """Take no new jobs; wait for the replies of those in flight (each ends by its
        deadline at the latest, and at most EBM_SHUTDOWN_GRACE_S is spent), then stop."""
        self._closed = True
        give_up = time.monotonic() + self._settings.shutdown_grace_s
        while time.monotonic() < give_up and any(
            not w.future.done() for w in self._waiting.values()
        ):
            await asyncio.sleep(0.02)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(RedisError, OSError):
            await self._client.delete(self.reply_stream)
        self._reader.close()
        self._enqueue.close()
        await self._client.aclose()

    # --- submit -----------------------------------------------------------------------
    async def submit(self, env: Envelope) -> Result:
        if self._closed:
            raise QueueUnavailable("the server is shutting down and takes no new work")
        stream = self.keys.jobs(env.model)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(loop.create_future(), stream=stream)
        self._waiting[env.id] = waiting
        # The caller stops waiting at its deadline (a timer, cheaper than wait_for).
        timer = loop.call_later(max(0.0, seconds_left(env.deadline)), self._expire, env)
        try:
            waiting.entry_id = await self._add(stream, env)
            return await waiting.future
        except asyncio.CancelledError:
            self._cancel_later(env.id, waiting)
            raise
        finally:
            timer.cancel()
            self._waiting.pop(env.id, None)

    def _expire(self, env: Envelope) -> None:
        waiting = self._waiting.get(env.id)
        if waiting is not None and not waiting.future.done():
            waiting.future.set_exception(
                DeadlineExceeded(
                    f"no reply for this {env.op} job of '{env.model}' before its deadline"
                )
            )

    async def _add(self, stream: str, env: Envelope) -> bytes:
        try:
            if not self._redis_ok:  # back after an outage: the reply stream first
                await self._prepare()
            payload = encode_envelope(env, self._offset)
            entry = await self._enqueue(
                [stream], [self._settings.max_backlog, payload, self.reply_stream]
            )
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(
                f"the job queue (Redis) is unreachable: {type(exc).__name__}; retry shortly"
            ) from exc
        if entry is None:
            backlog = self._settings.max_backlog
            raise Overloaded(
                f"model '{env.model}' has {backlog} jobs queued or computing (limit "
                "EBM_MAX_BACKLOG); retry later",
                retry_after_s=min(60.0, max(1.0, self._drain.seconds_for(backlog))),
            )
        added: bytes = entry
        return added

    def _cancel_later(self, job_id: str, waiting: _Waiting) -> None:
        """The caller is gone: delete the entry if it is still queued (it is then never
        computed) and tell the workers (the one computing it stops within one step)."""

        async def cancel() -> None:
            with contextlib.suppress(RedisError, OSError):
                async with self._client.pipeline(transaction=False) as pipe:
                    if waiting.entry_id is not None:
                        pipe.xdel(waiting.stream, waiting.entry_id)
                    pipe.publish(self.keys.cancel, job_id)
                    await pipe.execute()

        task = asyncio.get_running_loop().create_task(cancel())
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    # --- replies ----------------------------------------------------------------------
    async def _read_replies(self) -> None:
        backoff = 0.05
        since_trim = 0
        while not self._closed:
            try:
                if not self._redis_ok:
                    await self._prepare()
                    backoff = 0.05
                answer = await self._reader.read(
                    "XREAD",
                    "COUNT",
                    512,
                    "BLOCK",
                    int(REPLY_BLOCK_S * 1000),
                    "STREAMS",
                    self.reply_stream,
                    self._last_reply_id,
                )
                for _stream, entries in answer:
                    for entry_id, fields in entries:
                        self._last_reply_id = entry_id
                        self._deliver(fields)
                        since_trim += 1
                if answer:
                    # Let the answered requests respond before this loop spends its time
                    # on the next read: that is on their latency, the read is not.
                    await asyncio.sleep(0)
                if since_trim >= 256 or (not answer and since_trim):
                    # Replies are read once: drop what has been read.
                    await self._client.xtrim(self.reply_stream, minid=self._next_id())
                    since_trim = 0
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._redis_ok:
                    log.warning("Redis unreachable (%s); retrying", type(exc).__name__)
                self._redis_ok = False
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)
            except Exception:  # a bad reply must not stop the reader
                log.exception("reply reader: unexpected error")
                await asyncio.sleep(0.1)

    def _next_id(self) -> str:
        ms, seq = text(self._last_reply_id).split("-")
        return f"{ms}-{int(seq) + 1}"

    def _deliver(self, fields: dict[bytes, bytes]) -> None:
        data = fields.get(b"outcome")
        if data is None:
            return
        job_id, outcome = decode_outcome(data)
        self._drain.tick()
        waiting = self._waiting.get(job_id)
        if waiting is None or waiting.future.done():
            self.duplicates += 1  # redelivered and answered twice, or nobody waits
            return
        if isinstance(outcome, EBMError):
            waiting.future.set_exception(outcome)
        else:
            waiting.future.set_result(outcome)

    async def _heartbeat(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._settings.heartbeat_ms / 1000)
            if not self._redis_ok:
                continue
            with contextlib.suppress(RedisError, OSError):
                await self._prepare()
                await self._refresh_row_seconds()

    async def _refresh_row_seconds(self) -> None:
        """The slowest live worker's measured cost per model version: a job may land on
        any of them."""
        redis_ms = (time.time() + self._offset) * 1000
        live = await self._client.zrangebyscore(
            self.keys.workers, redis_ms - 3 * self._settings.heartbeat_ms, "+inf"
        )
        async with self._client.pipeline(transaction=False) as pipe:
            for worker_id in live:
                pipe.hgetall(self.keys.worker(text(worker_id)))
            infos = await pipe.execute()
        self._learn_row_seconds(infos)

    def _learn_row_seconds(self, infos: list[dict[bytes, bytes]]) -> None:
        costs: dict[str, float] = {}
        for info in infos:
            for key, value in info.items():
                field = text(key)
                if field.startswith(ROW_SECONDS_FIELD):
                    version = field.removeprefix(ROW_SECONDS_FIELD)
                    costs[version] = max(costs.get(version, 0.0), float(text(value)))
        self._row_seconds = costs

    # --- introspection ----------------------------------------------------------------
    def describe(self, name: str, version: int) -> dict[str, Any]:
        return {"backend": None, "parity": None, "rows_independent": None}

    def row_seconds(self, name: str, version: int) -> float | None:
        return self._row_seconds.get(f"{name}/{version}")

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Redis reachability, live workers per model, backlog per model, each worker's
        counters. Ready means jobs can be queued: workers may scale up from zero."""
        models = sorted(self._catalog.models)
        detail: dict[str, Any] = {"mode": "queue", "instance": self.instance}
        try:
            redis_ms = (time.time() + self._offset) * 1000
            stale = redis_ms - 3 * self._settings.heartbeat_ms
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(self.keys.workers, stale, "+inf")
                for model in models:
                    pipe.xlen(self.keys.jobs(model))
                    pipe.xlen(self.keys.dead(model))
                answers = await pipe.execute()
            live_ids = [text(w) for w in answers[0]]
            async with self._client.pipeline(transaction=False) as pipe:
                for worker_id in live_ids:
                    pipe.hgetall(self.keys.worker(worker_id))
                infos = await pipe.execute()
            self._learn_row_seconds(infos)
        except (RedisError, OSError) as exc:
            detail |= {"redis": f"unreachable: {type(exc).__name__}", "workers": {}}
            return False, detail
        workers = []
        per_model = dict.fromkeys(models, 0)
        for worker_id, info in zip(live_ids, infos, strict=True):
            fields = {text(k): text(v) for k, v in info.items()}
            served = [m for m in fields.get("models", "").split(",") if m]
            for model in served:
                if model in per_model:
                    per_model[model] += 1
            workers.append({"id": worker_id, **fields})
        detail |= {
            "redis": "ok",
            "workers": per_model,
            "live_workers": workers,
            "backlog": {m: answers[1 + 2 * i] for i, m in enumerate(models)},
            "dead_letters": {m: answers[2 + 2 * i] for i, m in enumerate(models)},
            "in_flight_here": len(self._waiting),
            "duplicate_replies": self.duplicates,
        }
        return True, detail
