"""Request bodies for ``ebm loadtest``, generated from a model's metadata.

``GET /v1/models/{name}`` declares each input's per-row shape, kind and bounds; from that
this module draws a pool of valid, varied bodies for /energy, /predict or /sample (seeded,
so two runs send the same bodies) and encodes each once, as JSON or msgpack. The load
engine then only cycles through ready bytes: no encoding happens while it measures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import httpx
import numpy as np
import orjson

from app.binary import JSON, MSGPACK, pack

__all__ = [
    "OPS",
    "Op",
    "Transport",
    "body_pool",
    "draw_input",
    "encode_body",
    "fetch_model",
    "file_body",
    "generate_bodies",
    "transport_headers",
]

Op = Literal["energy", "predict", "sample"]
Transport = Literal["json", "msgpack"]
OPS: tuple[Op, ...] = ("energy", "predict", "sample")


def fetch_model(base_url: str, name: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The model's metadata; raises ValueError with the server's message on a refusal."""
    url = f"{base_url.rstrip('/')}/v1/models/{name}"
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ValueError(f"cannot read GET {url}: {exc}") from exc
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise ValueError(f"GET {url} answered {response.status_code}: {message}")
    meta: dict[str, Any] = response.json()
    return meta


def draw_input(spec: Mapping[str, Any], rows: int, rng: np.random.Generator) -> np.ndarray:
    """``rows`` values of one input, float32 ``[rows, *shape]``, inside its declared bounds.

    A discrete input gets labels 0..num_classes-1; a bounded continuous one is uniform
    in its box; a normal prior (a latent z) is drawn from it and clipped to the bounds;
    an unbounded input is standard normal, clipped to whichever bound it declares.
    """
    shape = [int(d) for d in spec["shape"]]
    size = int(np.prod(shape))
    if spec.get("kind") == "discrete":
        labels = rng.integers(0, int(spec["num_classes"]), size=(rows, size))
        return labels.astype(np.float32).reshape(rows, *shape)
    low, high = spec.get("low"), spec.get("high")
    if low is not None and high is not None and spec.get("prior") != "normal":
        values = rng.uniform(np.asarray(low), np.asarray(high), size=(rows, size))
    else:
        values = rng.standard_normal((rows, size))
        values = np.clip(
            values,
            -np.inf if low is None else np.asarray(low),
            np.inf if high is None else np.asarray(high),
        )
    return values.astype(np.float32).reshape(rows, *shape)


def _content(
    meta: Mapping[str, Any], op: Op, rows: int, rng: np.random.Generator
) -> dict[str, Any]:
    inputs: Sequence[str] = meta["inputs"]
    if op == "energy":
        # Every input of the energy, z included: a latent model scores (x, y, z) triples.
        return {name: draw_input(meta[name], rows, rng) for name in inputs}
    # /predict and /sample take only x, and only a conditional model has one; an
    # unconditional model answers one set per request, so ``rows`` does not apply.
    if "x" in inputs:
        return {"x": draw_input(meta["x"], rows, rng)}
    return {}


def generate_bodies(
    meta: Mapping[str, Any], op: Op, *, rows: int = 1, pool: int = 64, seed: int = 0
) -> list[dict[str, Any]]:
    """``pool`` request contents (numpy arrays as values) for ``op`` on the model."""
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")
    if rows < 1 or pool < 1:
        raise ValueError("rows and pool must be >= 1")
    if op == "sample" and meta["y"].get("kind") == "discrete":
        # The server refuses these (422); a run of nothing but refusals measures nothing.
        raise ValueError(f"model {meta.get('name')!r} has a discrete y: /sample does not apply")
    rng = np.random.default_rng(seed)
    return [_content(meta, op, rows, rng) for _ in range(pool)]


def encode_body(content: Any, transport: Transport) -> bytes:
    """One body on the wire: JSON (arrays as nested lists) or msgpack (tensor maps)."""
    if transport == "msgpack":
        return pack(content)
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def body_pool(
    meta: Mapping[str, Any],
    op: Op,
    transport: Transport,
    *,
    rows: int = 1,
    pool: int = 64,
    seed: int = 0,
) -> list[bytes]:
    """Generated bodies, encoded once; identical contents collapse to one entry."""
    encoded = [
        encode_body(c, transport)
        for c in generate_bodies(meta, op, rows=rows, pool=pool, seed=seed)
    ]
    return list(dict.fromkeys(encoded))


def file_body(raw: bytes, transport: Transport) -> bytes:
    """The user's JSON body: as-is for JSON (even if invalid, to load-test error paths),
    converted for msgpack (which needs it to parse)."""
    if transport == "json":
        return raw
    try:
        return pack(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"--body must be JSON to be sent as msgpack: {exc}") from exc


def transport_headers(transport: Transport) -> dict[str, str]:
    """Content-Type and Accept of the transport (the engine's default is JSON)."""
    media = MSGPACK if transport == "msgpack" else JSON
    return {"Content-Type": media, "Accept": media}
