"""Parse large JSON bodies in a helper process, so the event loop never stalls on one.

Parsing JSON holds the GIL for the whole call (orjson does not release it), and so does
turning millions of Python floats into an array: a 55 MB body of 3.6M rows held the event
loop for over two seconds, and every other request (``/healthz`` included) waited. Moving
the parse to a thread would not help; a separate process does. The helper returns the body
with each top-level list already converted to a numpy array (a :class:`ParsedTensor`), which
comes back as one memory copy instead of millions of objects.

This module is imported by the helper process (``spawn``): it imports numpy and orjson only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import orjson
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

log = logging.getLogger("ebm.api")


@dataclass(frozen=True)
class ParsedTensor:
    """A request tensor converted in the parser process: its array, or why it is not one.

    ``rows`` is the length of the top-level list either way, so the row limit can be
    checked (413) without an array: the helper does not convert a list longer than any
    model accepts.
    """

    rows: int
    array: np.ndarray | None = None  # float32, or bool when every leaf is true/false
    problem: str | None = None  # e.g. "must contain only numbers, got strings"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.is_instance_schema(cls)


_KINDS = {bool: "booleans", str: "strings", type(None): "nulls", dict: "objects"}


def _kind_names(kinds: set[type]) -> str:
    return ", ".join(
        sorted(_KINDS.get(k, "numbers" if k in (int, float) else k.__name__) for k in kinds)
    )


def convert(data: list[Any], max_rows: int) -> ParsedTensor:
    """``data`` (nested lists) as an array without knowing the model: its depth is read
    from the first element of each level, and the leaves there must all be numbers (float32)
    or all booleans (a mask). The model's shape is checked later, in the serving process."""
    if len(data) > max_rows:
        return ParsedTensor(len(data), problem=f"has {len(data)} rows")
    level: list[Any] = data
    while level and isinstance(level[0], list):
        kinds = set(map(type, level))
        if kinds - {list}:
            return ParsedTensor(len(data), problem="is ragged: found numbers where lists belong")
        level = list(chain.from_iterable(level))
    kinds = set(map(type, level))
    if not kinds:
        return ParsedTensor(len(data), problem="is empty")
    if kinds == {bool}:
        dtype: type = bool
    elif kinds - {int, float}:
        return ParsedTensor(
            len(data), problem=f"must contain only numbers, got {_kind_names(kinds)}"
        )
    else:
        dtype = np.float32
    try:
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused when checked
            array: np.ndarray = np.array(data, dtype=dtype)
    except (ValueError, OverflowError):
        return ParsedTensor(len(data), problem="is ragged: rows must all have the same length")
    return ParsedTensor(len(data), array=array)


def parse(raw: bytes, max_rows: int) -> Any:
    """Runs in the helper process: the body with its top-level lists converted.

    A malformed body comes back as ``("invalid_json", message, position)``; an object
    value stays a small placeholder (no request field takes an object, and sending a big
    one back would cost the serving process what this process exists to save)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        return ("invalid_json", error.msg, error.pos)
    if not isinstance(body, dict):
        return [] if isinstance(body, list) else body
    return {
        key: convert(value, max_rows)
        if isinstance(value, list)
        else ({"object": "omitted"} if isinstance(value, dict) else value)
        for key, value in body.items()
    }


def _warm() -> None:
    """Nothing: submitting it starts the process before the first large body needs it."""


class BodyParser:
    """The helper process, started at the lifespan and restarted if it dies."""

    def __init__(self, processes: int) -> None:
        self._processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        # spawn, not fork: the serving process has threads (onnxruntime, the engine) that a
        # forked child would inherit mid-lock.
        self._pool = ProcessPoolExecutor(
            self._processes, mp_context=multiprocessing.get_context("spawn")
        )
        self._pool.submit(_warm)

    async def parse(self, raw: bytes, max_rows: int) -> Any:
        if self._pool is None:
            self.start()
        assert self._pool is not None
        try:
            parsed = await asyncio.wrap_future(self._pool.submit(parse, raw, max_rows))
        except BrokenProcessPool:
            log.error("the body parser process died; restarting it")
            self._pool.shutdown(wait=False)
            self.start()
            parsed = await asyncio.wrap_future(self._pool.submit(parse, raw, max_rows))
        if isinstance(parsed, tuple) and parsed and parsed[0] == "invalid_json":
            _, message, position = parsed
            # The same error orjson raises inline, which FastAPI turns into a 400.
            raise json.JSONDecodeError(message, raw.decode("utf-8", "replace"), position)
        return parsed

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
