"""What ``ebm loadtest`` shows and writes: progress bar, summary table, JSON, plot.

Everything here runs outside the measured requests' path: the progress bar is redrawn
from a periodic tick (no per-request work), the batch probe reads one response in eight
with a byte search instead of a parse, and matplotlib is imported only for ``--plot``.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.client.loadtest import LoadResult, Tick

__all__ = [
    "PLOT_INSTALL",
    "BatchProbe",
    "Point",
    "ProgressBar",
    "console_for",
    "print_summary",
    "require_matplotlib",
    "results_document",
    "write_plot",
]

PLOT_INSTALL = "pip install 'ebm-serve[plot]'"


# ------------------------------------------------------------------ server batch size

_JSON_MARKER = b'"coalesced_jobs":'
# msgpack: the key as a fixstr (0xa0 | 14 bytes), then the value.
_MSGPACK_MARKER = b"\xaecoalesced_jobs"
_DIGITS = re.compile(rb"\s*(\d+)")


class BatchProbe:
    """Mean ``stats.coalesced_jobs`` (how many requests shared the server's batch) over
    the responses it is shown; found with one ``rfind`` (stats end the body)."""

    __slots__ = ("_msgpack", "count", "total")

    def __init__(self, transport: str) -> None:
        self._msgpack = transport == "msgpack"
        self.total = 0
        self.count = 0

    def __call__(self, body: bytes) -> None:
        value = _msgpack_value(body) if self._msgpack else _json_value(body)
        if value is not None:
            self.total += value
            self.count += 1

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


def _json_value(body: bytes) -> int | None:
    at = body.rfind(_JSON_MARKER)
    if at < 0:
        return None
    match = _DIGITS.match(body, at + len(_JSON_MARKER))
    return int(match.group(1)) if match else None


def _msgpack_value(body: bytes) -> int | None:
    at = body.rfind(_MSGPACK_MARKER)
    if at < 0:
        return None
    pos = at + len(_MSGPACK_MARKER)
    if pos >= len(body):
        return None
    kind = body[pos]
    if kind < 0x80:  # positive fixint
        return kind
    widths = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}  # uint 8/16/32/64, big-endian
    width = widths.get(kind)
    if width is None or pos + 1 + width > len(body):
        return None
    return int.from_bytes(body[pos + 1 : pos + 1 + width], "big")


# ---------------------------------------------------------------------------- points


@dataclass(frozen=True)
class Point:
    """One run of a sweep: the engine's result and the mean server batch it saw."""

    result: LoadResult
    mean_coalesced_jobs: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.result.as_dict() | {"mean_coalesced_jobs": self.mean_coalesced_jobs}


def results_document(config: Mapping[str, Any], points: Sequence[Point]) -> dict[str, Any]:
    """The ``--json`` document: the run's settings, then one entry per point."""
    return {**config, "points": [p.as_dict() for p in points]}


# ---------------------------------------------------------------------- progress bar


def console_for(stream: IO[str]) -> Console:
    # Outside a terminal rich would wrap at 80 columns; a log line should not wrap.
    return Console(file=stream, width=None if stream.isatty() else 132, highlight=False)


class ProgressBar:
    """A rich progress bar redrawn on each engine tick (no refresh thread, so its CPU
    shows in the client's own figure, a few us per request at most)."""

    def __init__(self, console: Console, label: str, duration_s: float, max_requests: int) -> None:
        self._duration_s = duration_s
        self._max_requests = max_requests
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[sent]:>8} sent  {task.fields[rps]:>8} req/s"),
            TextColumn("{task.fields[errors]} errors"),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,
            transient=True,
        )
        self._task = self._progress.add_task(label, total=1.0, sent=0, rps="-", errors=0)

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def tick(self, tick: Tick) -> None:
        done = max(tick.elapsed_s / self._duration_s, tick.sent / self._max_requests)
        rps = f"{tick.sent / tick.elapsed_s:.0f}" if tick.elapsed_s > 0 else "-"
        self._progress.update(
            self._task, completed=min(done, 1.0), sent=tick.sent, rps=rps, errors=tick.errors
        )
        self._progress.refresh()


# ----------------------------------------------------------------------------- table


def _ms(value: float) -> str:
    # Three significant figures, at most 5 characters below 100 s: the table fits 80 columns.
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _rps(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _statuses(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def print_summary(console: Console, title: str, points: Sequence[Point]) -> None:
    """One row per point, then errors by status and open-loop drops, if any."""
    open_loop = any(p.result.rate_rps is not None for p in points)
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.caption = (
        "conc: concurrency; reqs: answered; req/s: throughput; p50..max: latency (ms); "
        "batch: mean stats.coalesced_jobs; CPU: the client's own, us per request"
    )
    table.caption_justify = "left"
    first = "rate" if open_loop else "conc"
    columns = [first, "reqs", "errors", "req/s", "p50", "p90", "p95", "p99", "max"]
    columns += ["batch", "CPU"]
    for name in columns:
        table.add_column(name, justify="right", no_wrap=True)
    for point in points:
        r = point.result
        batch = "-" if point.mean_coalesced_jobs is None else f"{point.mean_coalesced_jobs:.1f}"
        level = f"{r.rate_rps:g}" if r.rate_rps is not None else str(r.concurrency)
        table.add_row(
            level,
            str(r.requests),
            str(r.errors),
            _rps(r.throughput_rps),
            *(_ms(v) for v in (r.latency_ms_p50, r.latency_ms_p90, r.latency_ms_p95)),
            *(_ms(v) for v in (r.latency_ms_p99, r.latency_ms_max)),
            batch,
            f"{r.client_cpu_us_per_request:.0f}",
        )
    console.print(table)
    for point in points:
        r = point.result
        where = f"rate {r.rate_rps:g}" if r.rate_rps is not None else f"concurrency {r.concurrency}"
        if r.errors_by_status:
            console.print(f"{where}: errors by status: {_statuses(r.errors_by_status)}")
        checked = r.errors - sum(r.errors_by_status.values())
        if checked:
            console.print(f"{where}: {checked} 2xx answers failed the check")
        if r.rate_rps is not None:
            line = f"{where}: sent {r.sent}, dropped {r.dropped}, late {r.late}"
            if r.dropped:
                line += (
                    f" (dropped: all {r.concurrency} connections busy, the cap on outstanding"
                    " requests; the server is not keeping up, or raise --max-outstanding)"
                )
            console.print(line)


# ------------------------------------------------------------------------------ plot


def require_matplotlib() -> None:
    """Fail before the run, not after a long sweep, when ``--plot`` cannot be drawn."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError(f"--plot needs matplotlib: {PLOT_INSTALL}")


def write_plot(path: Path, title: str, points: Sequence[Point]) -> None:
    """Throughput and latency (p50, p99) against concurrency, side by side, as a PNG."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(f"--plot needs matplotlib: {PLOT_INSTALL}") from exc
    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    levels = [p.result.concurrency for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    left.plot(levels, [p.result.throughput_rps for p in points], marker="o")
    left.set_ylabel("throughput (req/s)")
    right.plot(levels, [p.result.latency_ms_p99 for p in points], marker="o", label="p99")
    right.plot(levels, [p.result.latency_ms_p50 for p in points], marker=".", ls="--", label="p50")
    right.set_ylabel("latency (ms)")
    right.legend()
    for axis in (left, right):
        axis.set_xlabel("concurrency")
        if len(set(levels)) > 1:
            axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(c) for c in levels])
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
