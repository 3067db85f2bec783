"""Which encoding a request arrived in and which its reply goes out in (JSON or msgpack).

``Transport`` is the outermost middleware, so every reply, the middlewares' own refusals
included, follows the request's ``Accept`` header. A msgpack request body is announced to
FastAPI as JSON (FastAPI parses a body only when its type is JSON) and decoded by
:class:`app.api.routing.OrjsonRequest` from the flag left in the scope. Only a request that
names msgpack in either header pays more than one pass over its headers.
"""

from __future__ import annotations

from contextvars import ContextVar

from starlette.types import ASGIApp, Receive, Scope, Send

from app.binary import is_msgpack, prefers_msgpack

#: The scope key that marks a msgpack request body.
MSGPACK_BODY = "ebm.msgpack_body"
#: Whether this request's replies are msgpack (set per request task by the middleware).
reply_in_msgpack: ContextVar[bool] = ContextVar("reply_in_msgpack", default=False)

_AS_JSON = (b"content-type", b"application/json")


class Transport:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if not any(b"msgpack" in value for _, value in headers):  # the usual request
            await self.app(scope, receive, send)
            return
        token = None
        rewritten = []
        for key, value in headers:
            if key == b"accept" and prefers_msgpack(value.decode("latin-1")):
                token = reply_in_msgpack.set(True)
            if key == b"content-type" and is_msgpack(value.decode("latin-1")):
                scope = {**scope, MSGPACK_BODY: True}
                rewritten.append(_AS_JSON)
            else:
                rewritten.append((key, value))
        if scope.get(MSGPACK_BODY):
            scope["headers"] = rewritten
        try:
            await self.app(scope, receive, send)
        finally:
            if token is not None:
                reply_in_msgpack.reset(token)
