"""Stop a job whose HTTP client went away.

Starlette does not cancel a handler when its client disconnects: the job would compute to
its deadline for nobody. The body is already read when a route awaits its job, so the
next ASGI message can only be ``http.disconnect``; waiting for it next to the job lets the
route cancel the job (its rows leave the batch within one step).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection; nobody reads a response."""


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request | None, work: Coroutine[Any, Any, T]) -> T:
    """``await work``, cancelled (ClientDisconnected) if the client disconnects first
    (no request: called outside HTTP, nothing to watch)."""
    if request is None:
        return await work
    job = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        job.cancel()
        raise
    finally:
        watch.cancel()
    if not job.done():
        job.cancel()
        raise ClientDisconnected
    return job.result()
