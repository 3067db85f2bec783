"""``ebm worker``: pull jobs from the Redis streams, compute them on the engine, reply.

One worker process loads the models it serves (all by default, ``--models`` for a few)
and runs the same :class:`~app.dispatch.engine.Engine` as embedded mode. Its loops:

- **read**: ``XREADGROUP`` on every served model's stream (COUNT = free prefetch slots,
  BLOCK); each job goes straight to the engine, whose batchers coalesce the jobs waiting
  together (a job that finds its batcher idle runs at once; jobs that arrive while a batch
  computes join the next one, waiting at most the model's max delay). Expired jobs are
  dropped before compute.
- **reply**: reply, XACK and XDEL in one atomic Lua script (``REPLY_LUA``, a transaction like
  MULTI at half its cost in redis-py): an entry is acknowledged exactly when its
  answer is on the caller's reply stream.
- **heartbeat**: the worker's liveness and counters (``/readyz`` shows them), and XCLAIM
  JUSTID on the entries it still holds, which resets their idle time: a long job is not
  taken for the job of a dead worker.
- **reaper**: XAUTOCLAIM of entries idle past ``EBM_VISIBILITY_TIMEOUT_MS`` (their worker
  died): they are computed again here, or, once delivered more than
  ``EBM_MAX_DELIVERIES`` times, moved to the dead-letter stream and their caller told.
- **cancel**: job ids published by the API when a caller goes away; the job's task is
  cancelled and its rows leave the batch at the next step.

SIGTERM (or SIGINT): stop reading, finish every job already taken, reply, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import socket
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from app.config import Settings
from app.dispatch.engine import Engine
from app.dispatch.queue import (
    GROUP,
    RELOAD_COMMAND,
    REPLY_LUA,
    ROW_SECONDS_FIELD,
    BlockingReader,
    Keys,
    Script,
    clock_offset,
    connect,
    ensure_group,
    entry_ms,
    is_nogroup,
    text,
)
from app.dispatch.wire import Envelope, Result, decode_envelope, encode_outcome
from app.errors import DeadLettered, EBMError
from app.logs import configure_logging
from app.registry.loader import load_registry

log = logging.getLogger("ebm.worker")

READ_BLOCK_S = 1.0  # one blocking read; the loop then re-checks for SIGTERM
REPLY_GRACE_S = 2.0  # keep retrying a reply this long past its job's deadline
DEAD_LETTER_MAXLEN = 10_000  # dead letters kept per model (the oldest are dropped)
RECENT_CANCELS = 4096  # cancelled ids remembered for jobs not read yet


@dataclass
class Counters:
    jobs: int = 0
    replied: int = 0
    errors: int = 0
    expired: int = 0
    cancelled: int = 0
    reclaimed: int = 0
    dead_lettered: int = 0
    queue_wait_ms: float = 0.0
    compute_ms: float = 0.0


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.queue_prefix)
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        only = None
        if settings.worker_models:
            only = frozenset(m.strip() for m in settings.worker_models.split(",") if m.strip())
        self._only = only
        self.registry = load_registry(settings, only)
        self.engine = Engine(self.registry, settings)
        self.streams = [self.keys.jobs(name) for name in sorted(self.registry.models)]
        self.client = connect(settings)
        self.reader = BlockingReader(settings, READ_BLOCK_S)
        self._reply = Script(settings, REPLY_LUA)
        self.counters = Counters()
        self.offset = 0.0
        self.stopping = asyncio.Event()
        self._jobs: dict[str, asyncio.Task[None]] = {}  # job id -> the handler computing it
        self._handlers: set[asyncio.Task[None]] = set()
        self._owned: dict[str, set[bytes]] = {s: set() for s in self.streams}
        self._recent_cancels: OrderedDict[str, None] = OrderedDict()
        self._slot_freed = asyncio.Event()
        self._reloading = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    # --- life cycle -------------------------------------------------------------------
    async def run(self) -> int:
        if not self.streams:
            log.error("no model to serve: %s", self.registry.unavailable or "none found")
            return 2
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_soon)
        await self._connect()
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._reaper_loop(), name="reaper"),
            asyncio.create_task(self._cancel_loop(), name="cancel"),
        ]
        log.info(
            "worker %s serving %s on %s",
            self.id,
            ", ".join(sorted(self.registry.models)),
            self._devices(),
        )
        await self._read_loop()
        log.info("worker %s stopping: finishing %d job(s)", self.id, len(self._handlers))
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self.client.zrem(self.keys.workers, self.id)
            await self.client.delete(self.keys.worker(self.id))
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.engine.close()
        self.reader.close()
        self._reply.close()
        await self.client.aclose()
        log.info("worker %s stopped; %s", self.id, self._summary())
        return 0

    def _devices(self) -> str:
        """Backends and devices in use, e.g. ``onnx:cpu`` or ``onnx:cuda,torch:cuda``."""
        used = {
            f"{m.backend.name}:{getattr(m.backend, 'device', 'cpu')}"
            for versions in self.registry.models.values()
            for m in versions.values()
        }
        return ",".join(sorted(used))

    async def _connect(self) -> None:
        """Wait for Redis (retrying) and make sure every served stream has its group."""
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                self.offset = await clock_offset(self.client)
                for stream in self.streams:
                    await ensure_group(self.client, stream)
                return
            except (RedisError, OSError) as exc:
                log.warning("Redis unreachable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)

    # --- read -------------------------------------------------------------------------
    def _free_slots(self) -> int:
        return self.settings.worker_prefetch - len(self._handlers)

    async def _read_loop(self) -> None:
        backoff = 0.05
        while not self.stopping.is_set():
            free = self._free_slots()
            if free <= 0:
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), READ_BLOCK_S)
                continue
            try:
                answer = await self.reader.read(
                    "XREADGROUP",
                    "GROUP",
                    GROUP,
                    self.id,
                    "COUNT",
                    free,
                    "BLOCK",
                    int(READ_BLOCK_S * 1000),
                    "STREAMS",
                    *self.streams,
                    *[">"] * len(self.streams),
                )
                backoff = 0.05
            except (RedisError, OSError) as exc:
                if is_nogroup(exc):  # Redis restarted empty: the groups are gone
                    log.warning("consumer group missing (Redis restarted empty?); re-creating")
                else:
                    log.warning("read failed (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(backoff)
                    backoff = min(1.0, backoff * 2)
                await self._connect()
                continue
            for stream, entries in answer:
                for entry_id, fields in entries:
                    self._take(text(stream), entry_id, fields)
            if answer:
                # Let the jobs reach the engine and its batcher start computing (a few
                # task hops) before this loop spends ~0.1 ms sending the next read.
                for _ in range(3):
                    await asyncio.sleep(0)

    def _take(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        self._owned[stream].add(entry_id)
        task = asyncio.create_task(self._handle(stream, entry_id, fields))
        self._handlers.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._handlers.discard(t)
            self._owned[stream].discard(entry_id)
            self._slot_freed.set()

        task.add_done_callback(done)

    # --- one job ----------------------------------------------------------------------
    async def _handle(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            env = decode_envelope(fields.get(b"job", b""), self.offset)
        except ValueError as exc:
            await self._dead_letter(stream, entry_id, fields, f"undecodable job: {exc}", None)
            return
        self.counters.jobs += 1
        redis_now_ms = (time.time() + self.offset) * 1000
        self.counters.queue_wait_ms += max(0.0, redis_now_ms - entry_ms(entry_id))
        if env.control.expired() or env.id in self._recent_cancels:
            # Nobody waits for it: drop it without computing.
            if env.id in self._recent_cancels:
                self.counters.cancelled += 1
            else:
                self.counters.expired += 1
            await self._finish(stream, entry_id, fields, env, None)
            return
        outcome = await self._compute(env)
        await self._finish(stream, entry_id, fields, env, outcome)

    async def _compute(self, env: Envelope) -> Result | EBMError | None:
        """The job's result or error; None when it was cancelled (nobody to answer).

        Only a cancel message cancels a handler (SIGTERM lets them finish), so a
        CancelledError here is the job's: the engine has marked it, its rows leave the batch
        at the next step, and this handler goes on to acknowledge it."""
        task = asyncio.current_task()
        assert task is not None
        self._jobs[env.id] = task
        started = time.monotonic()
        try:
            return await self.engine.run(env)
        except asyncio.CancelledError:
            task.uncancel()
            self.counters.cancelled += 1
            return None
        except EBMError as exc:
            self.counters.errors += 1
            return exc
        except Exception as exc:
            log.exception("job %s (%s on %s) failed", env.id, env.op, env.model)
            self.counters.errors += 1
            return EBMError(f"internal error in worker: {type(exc).__name__}")
        finally:
            self._jobs.pop(env.id, None)
            self.counters.compute_ms += (time.monotonic() - started) * 1000

    async def _finish(
        self,
        stream: str,
        entry_id: bytes,
        fields: dict[bytes, bytes],
        env: Envelope,
        outcome: Result | EBMError | None,
    ) -> None:
        """Reply (when someone waits), XACK and XDEL in one atomic script, retried while
        Redis is away until shortly after the job's deadline."""
        reply_to = fields.get(b"reply")
        answer = None if outcome is None else encode_outcome(env.id, env.op, outcome)
        give_up = max(env.deadline + REPLY_GRACE_S, time.time() + REPLY_GRACE_S)
        backoff = 0.05
        while True:
            try:
                await self._reply([stream, reply_to or b""], [answer or b"", entry_id, GROUP])
                if answer is not None:
                    self.counters.replied += 1
                return
            except ResponseError as exc:
                if is_nogroup(exc):  # Redis restarted empty: nothing left to ack
                    return
                raise
            except (RedisError, OSError) as exc:
                if time.time() > give_up:
                    log.warning("reply to job %s dropped: Redis away (%s)", env.id, exc)
                    return
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)

    async def _dead_letter(
        self,
        stream: str,
        entry_id: bytes,
        fields: dict[bytes, bytes],
        reason: str,
        deliveries: int | None,
    ) -> None:
        """Park the entry in the model's dead-letter stream and tell its caller, once."""
        model = self.keys.model_of(stream)
        letter: dict[Any, Any] = {
            "job": fields.get(b"job", b""),
            "reply": fields.get(b"reply", b""),
            "entry": entry_id,
            "reason": reason,
            "worker": self.id,
        }
        if deliveries is not None:
            letter["deliveries"] = deliveries
        answer = None
        with contextlib.suppress(ValueError):
            env = decode_envelope(fields.get(b"job", b""), self.offset)
            answer = encode_outcome(env.id, env.op, DeadLettered(reason))
        reply_to = fields.get(b"reply")
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xadd(
                    self.keys.dead(model), letter, maxlen=DEAD_LETTER_MAXLEN, approximate=True
                )
                if answer is not None and reply_to:
                    pipe.xadd(reply_to, {b"outcome": answer}, nomkstream=True)
                pipe.xack(stream, GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("dead-lettering %s failed (%s); the reaper retries", entry_id, exc)
            return
        self.counters.dead_lettered += 1
        log.error("job entry %s of %s dead-lettered: %s", text(entry_id), model, reason)

    # --- heartbeat, reaper, cancel ----------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        every = self.settings.heartbeat_ms / 1000
        last_log = time.monotonic()
        while True:
            with contextlib.suppress(RedisError, OSError):
                await self._heartbeat()
            if time.monotonic() - last_log >= 30:
                log.info("worker %s: %s", self.id, self._summary())
                last_log = time.monotonic()
            await asyncio.sleep(every)

    def stats(self) -> dict[str, Any]:
        engine = self.engine.stats().values()
        return asdict(self.counters) | {
            "batches": sum(s.batches for s in engine),
            "rows": sum(s.rows for s in engine),
            "in_flight": len(self._handlers),
        }

    def _summary(self) -> str:
        s = self.stats()
        jobs = max(1, s["jobs"])
        return (
            f"{s['jobs']} jobs in {s['batches']} batches ({s['rows']} rows); mean queue wait "
            f"{s['queue_wait_ms'] / jobs:.1f} ms, mean compute {s['compute_ms'] / jobs:.1f} ms; "
            f"{s['expired']} expired, {s['cancelled']} cancelled, {s['errors']} errors, "
            f"{s['reclaimed']} reclaimed, {s['dead_lettered']} dead-lettered"
        )

    async def _heartbeat(self) -> None:
        self.offset = await clock_offset(self.client)
        now_ms = (time.time() + self.offset) * 1000
        ttl_ms = int(10 * self.settings.heartbeat_ms)
        info: dict[Any, Any] = {
            k: str(round(v, 3) if isinstance(v, float) else v) for k, v in self.stats().items()
        }
        info |= {"models": ",".join(sorted(self.registry.models)), "device": self._devices()}
        info |= {
            f"{ROW_SECONDS_FIELD}{model.name}/{model.version}": repr(model.row_seconds)
            for versions in self.registry.models.values()
            for model in versions.values()
            if model.row_seconds is not None
        }
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.workers, {self.id: now_ms})
            pipe.zremrangebyscore(self.keys.workers, "-inf", now_ms - ttl_ms)
            pipe.hset(self.keys.worker(self.id), mapping=info)
            pipe.pexpire(self.keys.worker(self.id), ttl_ms)
            for stream, owned in self._owned.items():
                if owned:  # still ours: reset their idle time so no reaper takes them
                    pipe.xclaim(stream, GROUP, self.id, 0, list(owned), justid=True)
            await pipe.execute(raise_on_error=False)

    async def _reaper_loop(self) -> None:
        every = min(self.settings.visibility_timeout_ms / 4, 1000) / 1000
        while True:
            await asyncio.sleep(every)
            if self.stopping.is_set():
                return
            for stream in self.streams:
                with contextlib.suppress(RedisError, OSError):
                    await self._reap(stream)

    async def _reap(self, stream: str) -> None:
        free = self._free_slots()
        if free <= 0:
            return
        answer = await self.client.xautoclaim(
            stream,
            GROUP,
            self.id,
            min_idle_time=int(self.settings.visibility_timeout_ms),
            start_id="0-0",
            count=free,
        )
        claimed = answer[1]
        for entry_id, fields in claimed:
            if fields is None:  # deleted while pending (its caller cancelled it)
                continue
            pending = await self.client.xpending_range(
                stream, GROUP, min=entry_id, max=entry_id, count=1
            )
            deliveries = int(pending[0]["times_delivered"]) if pending else 1
            if deliveries > self.settings.max_deliveries:
                reason = (
                    f"delivered {deliveries} times without an answer (EBM_MAX_DELIVERIES="
                    f"{self.settings.max_deliveries}): every worker holding it stopped"
                )
                self._owned[stream].add(entry_id)
                try:
                    await self._dead_letter(stream, entry_id, fields, reason, deliveries)
                finally:
                    self._owned[stream].discard(entry_id)
                continue
            self.counters.reclaimed += 1
            log.warning(
                "reclaimed job entry %s of %s (delivery %d)", text(entry_id), stream, deliveries
            )
            self._take(stream, entry_id, fields)

    async def _cancel_loop(self) -> None:
        """Cancel messages (job ids) and fleet commands, from one subscription."""
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.cancel, self.keys.control)
                while True:
                    message = await pubsub.get_message(timeout=READ_BLOCK_S)
                    if not message or message.get("type") != "message":
                        continue
                    if text(message["channel"]) == self.keys.cancel:
                        self._cancel(text(message["data"]))
                    elif text(message["data"]) == RELOAD_COMMAND:
                        self._reload_soon()
            except (RedisError, OSError):
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    # --- reload -----------------------------------------------------------------------
    def _reload_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload(), name="reload")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _reload(self) -> None:
        """Load the models again beside the current ones and swap: jobs read from now on
        compute on the new engine; the old one finishes its jobs, then stops."""
        async with self._reloading:
            registry = await asyncio.to_thread(load_registry, self.settings, self._only)
            if not registry.models:
                log.error("reload found no model to serve; keeping the current ones")
                return
            streams = [self.keys.jobs(name) for name in sorted(registry.models)]
            for stream in streams:
                self._owned.setdefault(stream, set())
                with contextlib.suppress(RedisError, OSError):  # else _connect re-creates
                    await ensure_group(self.client, stream)
            old = self.engine
            self.registry, self.engine, self.streams = (
                registry,
                Engine(registry, self.settings),
                streams,
            )
            log.info(
                "worker %s reloaded: serving %s; %d version(s) unavailable",
                self.id,
                ", ".join(sorted(registry.models)),
                len(registry.unavailable),
            )
        # A handler reads self.engine and submits to it without an await in between: no job
        # can reach the old engine after this point, and close() finishes those it has.
        await old.close()

    def _cancel(self, job_id: str) -> None:
        task = self._jobs.get(job_id)
        if task is not None:
            task.cancel()
            return
        self._recent_cancels[job_id] = None
        while len(self._recent_cancels) > RECENT_CANCELS:
            self._recent_cancels.popitem(last=False)


def run_worker(settings: Settings) -> int:
    configure_logging(settings)

    async def main() -> int:
        return await Worker(settings).run()

    if importlib.util.find_spec("uvloop"):  # as `ebm serve` does (uvicorn[standard])
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())
