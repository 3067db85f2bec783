"""`ebm loadtest` against a real server (the shipped models): payloads, both loops, the CLI.

The engine's HTTP framing is covered against a scripted server in
tests/unit/client/test_loadtest.py; here every request goes to `ebm serve`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.binary import pack
from app.client import payloads
from app.client.loadtest import LoadResult, LoadSpec, Tick, run_spec_sync
from app.client.report import BatchProbe
from tests.servers import REPO, Server

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _energy_url(server: Server, model: str = "car", op: str = "energy") -> str:
    return f"{server.url}/v1/models/{model}/{op}"


def _pool(server: Server, model: str, op: payloads.Op, **kwargs: Any) -> list[bytes]:
    meta = payloads.fetch_model(server.url, model)
    return payloads.body_pool(meta, op, "json", **kwargs)


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "loadtest", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _assert_consistent(result: LoadResult) -> None:
    # Every request sent was either answered (with some status) or failed unanswered.
    assert result.requests + result.failed == result.sent
    assert sum(result.status_counts.values()) == result.requests
    non_2xx = sum(v for k, v in result.status_counts.items() if not 200 <= k < 300)
    assert result.errors == non_2xx + result.failed
    assert (
        result.latency_ms_p50
        <= result.latency_ms_p90
        <= result.latency_ms_p95
        <= result.latency_ms_p99
        <= result.latency_ms_max
    )


# ------------------------------------------------------------------------- payloads


@pytest.mark.parametrize(
    ("model", "op"),
    [
        ("car", "energy"),
        ("car", "predict"),
        ("car", "sample"),
        ("mixture", "energy"),  # a discrete latent z is part of the scored triple
        ("digits-inpaint", "energy"),  # a normal-prior z, image-shaped x and y
        ("digits", "predict"),  # a discrete y
        ("ellipse", "sample"),  # unconditional: no x at all
    ],
)
def test_generated_bodies_are_accepted(server: Server, model: str, op: payloads.Op) -> None:
    meta = payloads.fetch_model(server.url, model)
    for transport in ("json", "msgpack"):
        bodies = payloads.body_pool(meta, op, transport, rows=2, pool=3, seed=1)
        headers = payloads.transport_headers(transport)
        for body in bodies:
            response = httpx.post(
                _energy_url(server, model, op), content=body, headers=headers, timeout=60
            )
            assert response.status_code == 200, (transport, response.content[:300])


def test_generated_values_respect_shapes_and_bounds(server: Server) -> None:
    meta = payloads.fetch_model(server.url, "digits-inpaint")
    contents = payloads.generate_bodies(meta, "energy", rows=5, pool=4, seed=3)
    for name in meta["inputs"]:
        spec = meta[name]
        values = np.stack([c[name] for c in contents])
        assert values.shape == (4, 5, *spec["shape"])
        flat = values.reshape(-1, int(np.prod(spec["shape"])))
        assert (flat >= np.asarray(spec["low"])).all()
        assert (flat <= np.asarray(spec["high"])).all()
    # Seeded and varied: the same seed repeats the pool, each body differs from the next.
    again = payloads.generate_bodies(meta, "energy", rows=5, pool=4, seed=3)
    assert all(np.array_equal(a["y"], b["y"]) for a, b in zip(contents, again, strict=True))
    assert not np.array_equal(contents[0]["y"], contents[1]["y"])
    digits = payloads.fetch_model(server.url, "digits")
    labels = payloads.generate_bodies(digits, "energy", rows=50, pool=1)[0]["y"]
    assert set(np.unique(labels)) <= set(range(10))


def test_batch_probe_reads_both_encodings() -> None:
    probe = BatchProbe("json")
    probe(b'{"predictions":[],"stats":{"method":"gd","coalesced_jobs":3,"time_ms":1.5}}')
    probe(b'{"energy":[1.0]}')
    assert (probe.count, probe.mean()) == (1, 3.0)
    packed = BatchProbe("msgpack")
    for jobs in (2, 200, 70000):
        packed(pack({"stats": {"coalesced_jobs": jobs, "time_ms": 2.0}}))
    assert packed.mean() == pytest.approx((2 + 200 + 70000) / 3)


# --------------------------------------------------------------------------- engine


def test_closed_loop_counts_percentiles_and_progress(server: Server) -> None:
    ticks: list[Tick] = []
    spec = LoadSpec(
        url=_energy_url(server),
        bodies=_pool(server, "car", "energy"),
        concurrency=4,
        max_duration_s=1.0,
        max_requests=1_000_000,
        warmup_requests=20,
        on_tick=ticks.append,
    )
    result = run_spec_sync(spec)
    _assert_consistent(result)
    assert result.requests > 50
    assert result.errors == 0
    assert result.status_counts == {200: result.requests}
    assert 1.0 <= result.duration_s < 3.0
    assert result.client_cpu_us_per_request > 0
    assert len(ticks) >= 2
    assert ticks[-1].sent <= result.sent


def test_request_bound_ends_a_long_run(server: Server) -> None:
    spec = LoadSpec(
        url=_energy_url(server),
        bodies=_pool(server, "car", "energy"),
        concurrency=3,
        max_requests=40,
        max_duration_s=60.0,
    )
    result = run_spec_sync(spec)
    assert (result.sent, result.requests, result.errors) == (40, 40, 0)
    assert result.duration_s < 10


def test_open_loop_follows_the_rate(server: Server) -> None:
    spec = LoadSpec(
        url=_energy_url(server),
        bodies=_pool(server, "car", "energy"),
        rate=200.0,
        concurrency=32,
        max_duration_s=1.5,
        max_requests=100_000,
    )
    result = run_spec_sync(spec)
    _assert_consistent(result)
    assert result.rate_rps == 200.0
    assert result.dropped == 0
    assert result.errors == 0
    # Poisson counts over 1.5 s at 200/s: 300 +- 17 (1 sd); a wide margin for a busy host.
    assert 200 <= result.sent <= 400
    assert result.throughput_rps == pytest.approx(result.requests / result.duration_s)


def test_open_loop_drops_arrivals_when_the_cap_is_hit(server: Server) -> None:
    # /predict takes ~10 ms on car; 400 arrivals/s on one connection must overflow it.
    spec = LoadSpec(
        url=_energy_url(server, op="predict"),
        bodies=_pool(server, "car", "predict"),
        rate=400.0,
        concurrency=1,
        max_duration_s=1.0,
        max_requests=100_000,
    )
    result = run_spec_sync(spec)
    _assert_consistent(result)
    assert result.dropped > 0
    assert result.sent >= 1
    assert result.errors == 0


def test_client_cpu_per_request_at_1000_per_second(server: Server) -> None:
    """The bar: at most ~100 us of the client's own CPU per request at 1,000 req/s.

    Measured 70 us on the 2-core development machine (server on the same cores). Only a
    generous bound is asserted: other agents share the machine.
    """
    spec = LoadSpec(
        url=_energy_url(server),
        bodies=_pool(server, "car", "energy"),
        rate=1000.0,
        concurrency=64,
        max_duration_s=2.0,
        max_requests=100_000,
        warmup_requests=100,
    )
    result = run_spec_sync(spec)
    print(
        f"\nopen loop 1000 req/s on car /energy: {result.throughput_rps:.0f} req/s, "
        f"client CPU {result.client_cpu_us_per_request:.1f} us/req, "
        f"dropped {result.dropped}, late {result.late}"
    )
    _assert_consistent(result)
    assert result.requests > 1000
    assert result.client_cpu_us_per_request < 1000


# ------------------------------------------------------------------------------ CLI


def test_help_exits_zero() -> None:
    for command in (["-m", "app.cli", "loadtest"], ["-m", "app.client.loadtest"]):
        done = subprocess.run(
            [sys.executable, *command, "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        for option in ("--rate", "--sweep", "--transport", "--plot", "bounds:", "targets:"):
            assert option in done.stdout


def test_cli_sweep_writes_json_and_plot(server: Server, tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    done = _cli(
        *("--url", server.url, "--model", "car", "--sweep", "1,4,16", "--duration", "2"),
        *("--json", str(out), "--plot", str(png)),
    )
    assert done.returncode == 0, done.stderr
    # The target is printed before any load is sent.
    assert f"POST {server.url}/v1/models/car/energy" in done.stderr
    assert "p99" in done.stdout
    document = json.loads(out.read_text())
    assert document["mode"] == "closed"
    assert [p["concurrency"] for p in document["points"]] == [1, 4, 16]
    for point in document["points"]:
        assert point["errors"] == 0
        assert point["requests"] > 0
        assert point["throughput_rps"] > 0
        assert 0 < point["latency_ms_p50"] <= point["latency_ms_p99"] <= point["latency_ms_max"]
        assert point["client_cpu_us_per_request"] > 0
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_cli_predict_reports_the_server_batch(server: Server) -> None:
    done = _cli(
        *("--url", server.url, "--model", "car", "--op", "predict", "--concurrency", "4"),
        *("--duration", "1", "--transport", "msgpack", "--quiet", "--json"),
    )
    assert done.returncode == 0, done.stderr
    (point,) = json.loads(done.stdout)["points"]
    assert point["errors"] == 0
    assert point["mean_coalesced_jobs"] is not None
    assert 1 <= point["mean_coalesced_jobs"] <= 4


def test_cli_open_loop(server: Server) -> None:
    done = _cli(
        *("--url", server.url, "--model", "car", "--rate", "300", "--duration", "1"),
        *("--quiet", "--json", "-"),
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    (point,) = document["points"]
    assert (document["mode"], point["rate_rps"]) == ("open", 300.0)
    assert point["dropped"] == 0
    assert point["sent"] == point["requests"] > 0


def test_cli_bad_body_is_counted_by_status(server: Server, tmp_path: Path) -> None:
    body = tmp_path / "bad.json"
    body.write_text('{"y": [[1.0]]}')  # car needs x, and y has 2 components
    done = _cli(
        *("--url", server.url, "--model", "car", "--body", str(body), "--requests", "30"),
        *("--quiet", "--json"),
    )
    assert done.returncode == 1, done.stderr
    (point,) = json.loads(done.stdout)["points"]
    assert point["errors_by_status"] == {"422": 30}
    assert point["status_counts"] == {"422": 30}
    assert point["sent"] == point["errors"] == 30


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no-such-model"], "404"),
        (["--model", "car", "--rate", "10", "--sweep", "1,2"], "--sweep"),
        ([], "--model"),
    ],
)
def test_cli_refuses_before_sending(server: Server, args: list[str], message: str) -> None:
    done = _cli("--url", server.url, *args, "--duration", "1")
    assert done.returncode == 2
    assert message in done.stderr
