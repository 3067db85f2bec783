"""`make bench`: every benchmark, one after another; exit 1 if any bar is missed."""

from __future__ import annotations

from tests.bench import (
    bench_admission,
    bench_backend,
    bench_energy,
    bench_large_body,
    bench_modes,
    bench_predict,
    bench_queue,
    bench_reply_path,
    peers,
)


def main() -> int:
    failures = 0
    benches = (
        ("energy", bench_energy),
        ("predict", bench_predict),
        ("queue", bench_queue),
        ("reply path", bench_reply_path),
        ("large body", bench_large_body),
        ("admission", bench_admission),
        ("backend call overhead", bench_backend),
        ("mode recovery", bench_modes),
        ("peers: plain FastAPI and LitServe", peers),
    )
    for name, bench in benches:
        print(f"== {name}")
        failures += bench.main([]) != 0
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
