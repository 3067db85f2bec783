"""The typed Python SDK: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Each /v1 operation is written once, as a function that turns the caller's arguments into a
:class:`_Call` (method, path, body, how to read the answer). ``_blocking`` and
``_awaiting`` make client methods of it with the same signature, so the two clients
cannot drift apart; they differ only in how they send and sleep. Sending handles what
every call shares: the transport's encoding, headers, the retry loop and error mapping.

Bodies carry only the fields the caller set: None means "omitted", so the server's
defaults (and its rule that a field which does not apply is refused) stay in force.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, Literal, ParamSpec, TypeVar
from urllib.parse import quote

import httpx
import numpy as np
import orjson
from numpy.typing import NDArray

from app import binary
from app.client.errors import (
    BadResponse,
    EBMError,
    Timeout,
    TransportError,
    error_class,
)
from app.client.results import EnergyResult, ModelInfo, ModelList, PredictResult, SampleResult

Transport = Literal["msgpack", "json"]
#: A request tensor: a numpy array (sent as a tensor map over msgpack, as lists over JSON)
#: or nested lists (sent as they are, so the server's shape checks and messages apply).
Tensor = NDArray[Any] | Sequence[Any]
#: ``on_retry(error, delay_s)``: called before each retry's sleep (logging, metrics).
RetryHook = Callable[[EBMError, float], None]

R = TypeVar("R")
P = ParamSpec("P")

_RETRY_STATUSES = frozenset({429, 503})  # the server says: full or going away, come back
# No answer came, but one may on a fresh connection: refused, reset, closed mid-answer.
_RETRY_TRANSPORT = (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ConnectTimeout)
_USER_AGENT = "ebm-serve-sdk/0.1"


# --- one operation, transport-neutral ----------------------------------------------------
@dataclass(frozen=True)
class _Call(Generic[R]):
    method: str
    path: str
    parse: Callable[[Mapping[str, Any], str], R]  # (decoded body, request id) -> result
    body: Mapping[str, Any] | None = None
    params: Mapping[str, Any] | None = None
    request_id: str | None = None


def _given(**fields: Any) -> dict[str, Any]:
    """The fields the caller set (None: omitted, the server's default applies)."""
    return {k: v for k, v in fields.items() if v is not None}


def _model_path(name: str, operation: str = "") -> str:
    # A model name is one path segment whatever it contains ("/" included).
    path = f"/v1/models/{quote(name, safe='')}"
    return f"{path}/{operation}" if operation else path


def _models(*, request_id: str | None = None) -> _Call[ModelList]:
    """Every model the server knows, available or not (GET /v1/models)."""
    return _Call("GET", "/v1/models", ModelList.from_body, request_id=request_id)


def _model(
    name: str, *, version: int | None = None, request_id: str | None = None
) -> _Call[ModelInfo]:
    """One model's specs, defaults, limits and card (GET /v1/models/{name}); ``version``
    defaults to the newest."""
    params = _given(version=version)
    return _Call(
        "GET", _model_path(name), ModelInfo.from_body, params=params, request_id=request_id
    )


def _energy(
    name: str,
    *,
    x: Tensor | None = None,
    y: Tensor,
    z: Tensor | None = None,
    grad: bool = False,
    free_energy: Literal["min", "marginal"] | None = None,
    beta: float | None = None,
    num_samples: int | None = None,
    seed: int | None = None,
    version: int | None = None,
    deadline_ms: float | None = None,
    request_id: str | None = None,
) -> _Call[EnergyResult]:
    """E(x, y[, z]) per row, low meaning compatible (POST /v1/models/{name}/energy).

    ``grad`` adds dE/dy (and dE/dz) in ``result.grads``. ``free_energy`` reduces a latent
    model's energy over z when z is omitted: "min" (arg-min z in ``result.z``) or
    "marginal" (``beta``, ``num_samples``, ``seed`` tune it)."""
    body = _given(
        x=x,
        y=y,
        z=z,
        grad=grad or None,  # flags off by default are sent only when on
        free_energy=free_energy,
        beta=beta,
        num_samples=num_samples,
        seed=seed,
        version=version,
        deadline_ms=deadline_ms,
    )
    return _Call(
        "POST", _model_path(name, "energy"), EnergyResult.from_body, body, None, request_id
    )


def _predict(
    name: str,
    *,
    x: Tensor | None = None,
    y_known: Tensor | None = None,
    y_mask: Tensor | None = None,
    k: int | None = None,
    method: Literal["auto", "gd", "langevin", "dfo", "enumerate"] | None = None,
    seed: int | None = None,
    num_starts: int | None = None,
    steps: int | None = None,
    step_size: float | None = None,
    noise_scale: float | None = None,
    temperature: float | None = None,
    merge_radius: float | None = None,
    tol: float | None = None,
    return_trajectory: bool = False,
    version: int | None = None,
    deadline_ms: float | None = None,
    request_id: str | None = None,
) -> _Call[PredictResult]:
    """Up to ``k`` distinct low-energy answers y per x, lowest energy first (POST
    /v1/models/{name}/predict). ``y_known`` with ``y_mask`` clamps the observed components
    of y (fill in the blanks); ``seed`` makes the answer replayable (the seed used is in
    ``result.stats["seed"]``)."""
    body = _given(
        x=x,
        y_known=y_known,
        y_mask=y_mask,
        k=k,
        method=method,
        seed=seed,
        num_starts=num_starts,
        steps=steps,
        step_size=step_size,
        noise_scale=noise_scale,
        temperature=temperature,
        merge_radius=merge_radius,
        tol=tol,
        return_trajectory=return_trajectory or None,
        version=version,
        deadline_ms=deadline_ms,
    )
    return _Call(
        "POST", _model_path(name, "predict"), PredictResult.from_body, body, None, request_id
    )


def _sample(
    name: str,
    *,
    x: Tensor | None = None,
    y_known: Tensor | None = None,
    y_mask: Tensor | None = None,
    n: int | None = None,
    temperature: float | None = None,
    steps: int | None = None,
    step_size: float | None = None,
    chains: int | None = None,
    thin: int | None = None,
    return_trajectory: bool = False,
    seed: int | None = None,
    version: int | None = None,
    deadline_ms: float | None = None,
    request_id: str | None = None,
) -> _Call[SampleResult]:
    """``n`` samples per x (POST /v1/models/{name}/sample): prior latents decoded, or
    Langevin chains on y (``steps``, ``step_size``, ``chains``, ``thin`` tune those)."""
    body = _given(
        x=x,
        y_known=y_known,
        y_mask=y_mask,
        n=n,
        temperature=temperature,
        steps=steps,
        step_size=step_size,
        chains=chains,
        thin=thin,
        return_trajectory=return_trajectory or None,
        seed=seed,
        version=version,
        deadline_ms=deadline_ms,
    )
    return _Call(
        "POST", _model_path(name, "sample"), SampleResult.from_body, body, None, request_id
    )


# --- wire encoding -----------------------------------------------------------------------
def _json_body(body: Mapping[str, Any]) -> bytes:
    # tolist() is exact (every float32 is a float64) and runs in C; OPT_SERIALIZE_NUMPY
    # covers numpy scalars a caller may pass as a seed or a count.
    plain = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in body.items()}
    return orjson.dumps(plain, option=orjson.OPT_SERIALIZE_NUMPY)


def _msgpack_body(body: Mapping[str, Any]) -> bytes:
    # Every model computes in float32, so other float arrays are narrowed here (the server
    # would do the same rounding) and travel at half the bytes; integer and boolean arrays
    # (labels, masks) go as they are.
    def narrowed(value: Any) -> Any:
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            return value.astype(np.float32, copy=False)
        return value

    return binary.pack({k: narrowed(v) for k, v in body.items()})


def _decode(response: httpx.Response) -> Any:
    """The answer's body: msgpack when the server says so, else JSON (errors raised before
    the route ran, e.g. by a proxy, may be JSON whatever was asked)."""
    if binary.is_msgpack(response.headers.get("content-type")):
        return binary.unpack(response.content)
    return orjson.loads(response.content)


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds; the HTTP-date form is not used by the server and ignored."""
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return max(0.0, seconds)


def _http_error(response: httpx.Response, request_id: str, attempts: int) -> EBMError:
    """The typed exception of a 4xx/5xx answer, from its ``{"error": {type, message}}``."""
    try:
        envelope = _decode(response)["error"]
        error_type, message = str(envelope["type"]), str(envelope["message"])
    except (ValueError, KeyError, TypeError):  # not the server's envelope (a proxy's page)
        error_type = "http_error"
        message = response.text[:500] or response.reason_phrase
    cls = error_class(response.status_code, error_type)
    return cls(
        message,
        status=response.status_code,
        type=error_type,
        request_id=request_id,
        retry_after=_retry_after(response),
        attempts=attempts,
    )


def _transport_error(exc: httpx.TransportError, request_id: str, attempts: int) -> EBMError:
    cls = Timeout if isinstance(exc, httpx.TimeoutException) else TransportError
    error = cls(
        f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
        type="timeout" if cls is Timeout else "transport_error",
        request_id=request_id,
        attempts=attempts,
    )
    error.__cause__ = exc
    return error


# --- what both clients share -------------------------------------------------------------
@dataclass(frozen=True)
class _Failure:
    error: EBMError
    retryable: bool


class _Base:
    """Configuration, encoding and the retry policy; subclasses own the connection pool."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: Transport = "msgpack",
        retries: int = 3,
        backoff_base: float = 0.1,
        backoff_cap: float = 10.0,
        headers: Mapping[str, str] | None = None,
        on_retry: RetryHook | None = None,
    ) -> None:
        if transport not in ("msgpack", "json"):
            raise ValueError(f"transport must be 'msgpack' or 'json', got {transport!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.base_url = base_url
        self.transport: Transport = transport
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.on_retry = on_retry
        self._random = random.Random()
        media = binary.MSGPACK if transport == "msgpack" else binary.JSON
        self._headers = {"Accept": media, "User-Agent": _USER_AGENT, **(headers or {})}
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = httpx.Timeout(timeout)
        self._open()

    def _open(self) -> None:
        raise NotImplementedError

    def _build(self, http: httpx.Client | httpx.AsyncClient, call: _Call[Any]) -> httpx.Request:
        """The request, encoded once and resent as it is by every retry."""
        headers = {"X-Request-ID": call.request_id or uuid.uuid4().hex}
        content = None
        if call.body is not None:
            if self.transport == "msgpack":
                content = _msgpack_body(call.body)
                headers["Content-Type"] = binary.MSGPACK
            else:
                content = _json_body(call.body)
                headers["Content-Type"] = binary.JSON
        return http.build_request(
            call.method, call.path, content=content, params=call.params, headers=headers
        )

    def _outcome(
        self,
        call: _Call[R],
        answer: httpx.Response | httpx.TransportError,
        request_id: str,
        attempt: int,
    ) -> R | _Failure:
        """The result of one attempt, or why it failed and whether a retry may help."""
        if isinstance(answer, httpx.TransportError):
            # The operations compute without side effects, so resending after a refused or
            # reset connection is safe. A timeout waiting for the answer is not retried (the
            # caller's timeout would silently multiply), nor a request httpx cannot send
            # (a bad URL scheme, an invalid header): resending cannot fix those.
            retryable = isinstance(answer, _RETRY_TRANSPORT)
            return _Failure(_transport_error(answer, request_id, attempt), retryable)
        if not answer.is_success:
            error = _http_error(answer, request_id, attempt)
            return _Failure(error, answer.status_code in _RETRY_STATUSES)
        try:
            return call.parse(_decode(answer), request_id)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            error = BadResponse(
                f"cannot read the answer of {call.method} {call.path}: {exc!r}",
                status=answer.status_code,
                type="bad_response",
                request_id=request_id,
                attempts=attempt,
            )
            error.__cause__ = exc
            return _Failure(error, False)

    def _wait_or_raise(self, failure: _Failure, attempt: int) -> float:
        """Seconds to sleep before retry ``attempt`` (1-based); raises the error instead when
        it is final: not retryable, retries spent, or a Retry-After above ``backoff_cap``
        (left to the caller, in ``error.retry_after``, rather than slept through).

        Full jitter (a uniform draw up to the doubling bound) spreads clients that failed
        together; the server's Retry-After is a floor, with the jitter on top of it."""
        error = failure.error
        if not failure.retryable or attempt > self.retries:
            raise error
        bound = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        delay = self._random.uniform(0, bound)
        if error.retry_after is not None:
            if error.retry_after > self.backoff_cap:
                raise error
            delay += error.retry_after
        if self.on_retry is not None:
            self.on_retry(error, delay)
        return delay


# --- the blocking client -----------------------------------------------------------------
def _described(
    method: Callable[..., Any], build: Callable[..., Any], owner: str, returns: str
) -> None:
    """Name, docstring and signature of the operation as ``help()`` and ``inspect`` should
    show them (``functools.wraps`` alone would show the builder's name and its _Call)."""
    functools.update_wrapper(method, build)
    method.__name__ = build.__name__.lstrip("_")
    method.__qualname__ = f"{owner}.{method.__name__}"
    signature = inspect.signature(build)
    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    result = str(signature.return_annotation).removeprefix("_Call[").removesuffix("]")
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[this, *signature.parameters.values()],
        return_annotation=returns.format(result),
    )
    del method.__wrapped__  # type: ignore[attr-defined]


def _blocking(build: Callable[P, _Call[R]]) -> Callable[Concatenate[Client, P], R]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._run(build(*args, **kwargs))

    _described(method, build, "Client", "{}")
    return method


class Client(_Base):
    """Blocking client of one ebm-serve server; use it as a context manager or ``close()``.

    ``Client(base_url, api_key=None, *, timeout=30.0, transport="msgpack", retries=3,
    backoff_base=0.1, backoff_cap=10.0, headers=None, on_retry=None)``

    ``transport``: "msgpack" (tensors as raw bytes) or "json". ``retries``: resends on 429,
    503 and connection failures, with exponential backoff (``backoff_base`` doubling up to
    ``backoff_cap`` seconds, full jitter, at least the server's Retry-After; a Retry-After
    above ``backoff_cap`` is not slept through: the error is raised with ``retry_after``).
    ``timeout``: seconds for each of connect, send, wait and pool; a read timeout raises
    :class:`Timeout` and is not retried. Every call sends an ``X-Request-ID``
    (``request_id=`` or a fresh one) that results and errors carry as ``request_id``.
    ``on_retry(error, delay_s)`` is called before each retry's sleep.
    """

    _http: httpx.Client

    def _open(self) -> None:
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, timeout=self._timeout
        )

    models = _blocking(_models)
    model = _blocking(_model)
    energy = _blocking(_energy)
    predict = _blocking(_predict)
    sample = _blocking(_sample)

    def _run(self, call: _Call[R]) -> R:
        request = self._build(self._http, call)
        request_id = request.headers["X-Request-ID"]
        attempt = 0
        while True:
            attempt += 1
            answer: httpx.Response | httpx.TransportError
            try:
                answer = self._http.send(request)
            except httpx.TransportError as exc:
                answer = exc
            outcome = self._outcome(call, answer, request_id, attempt)
            if not isinstance(outcome, _Failure):
                return outcome
            time.sleep(self._wait_or_raise(outcome, attempt))

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- the asyncio client ------------------------------------------------------------------
def _awaiting(
    build: Callable[P, _Call[R]],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, R]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._run(build(*args, **kwargs))

    _described(method, build, "AsyncClient", "Awaitable[{}]")
    return method


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`, with the same constructor and methods, awaited;
    ``async with`` or ``await close()``. One instance serves many concurrent calls."""

    _http: httpx.AsyncClient

    def _open(self) -> None:
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=self._timeout
        )

    models = _awaiting(_models)
    model = _awaiting(_model)
    energy = _awaiting(_energy)
    predict = _awaiting(_predict)
    sample = _awaiting(_sample)

    async def _run(self, call: _Call[R]) -> R:
        request = self._build(self._http, call)
        request_id = request.headers["X-Request-ID"]
        attempt = 0
        while True:
            attempt += 1
            answer: httpx.Response | httpx.TransportError
            try:
                answer = await self._http.send(request)
            except httpx.TransportError as exc:
                answer = exc
            outcome = self._outcome(call, answer, request_id, attempt)
            if not isinstance(outcome, _Failure):
                return outcome
            await asyncio.sleep(self._wait_or_raise(outcome, attempt))

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
