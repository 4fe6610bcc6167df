"""Benchmark: the openai teach backend at concurrency 32 vs 1 against a server with fixed latency.

    .venv/bin/python benchmarks/teach_concurrency.py [--questions 64] [--latency 0.2] [--concurrency 32]

The fake OpenAI-compatible server (tests/teacher_server.py) runs in its own process, so the
client's CPU time (time.process_time) is the teach client's alone: request building (base64
image), the openai client, response parsing, rationale parsing and the SQLite commit. Each run
uses a fresh cache. Target: throughput ratio >= 20x (median of --repeats parallel runs).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from teacher_server import make_problems  # noqa: E402

from svrd.teach import teach  # noqa: E402
from svrd.teach.openai_backend import OpenAIBackend  # noqa: E402


def cfg(base_url: str, concurrency: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        backend="openai", model="fake-teacher", base_url=base_url, api_key_env="SVRD_BENCH_KEY",
        concurrency=concurrency, batch_size=1, samples=1, temperature=0.0, max_new_tokens=512,
        timeout_s=30.0, max_retries=2, on_disagree="substitute", on_contradiction="keep",
    )


def measure(rows: list[dict], base_url: str, concurrency: int) -> dict:
    c = cfg(base_url, concurrency)
    with tempfile.TemporaryDirectory() as tmp:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = teach(rows, c, cache_path=Path(tmp) / "teach.sqlite", backend=OpenAIBackend(c), progress=False)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    assert result.metrics["requests"] == len(rows) and result.metrics["agreed"] == len(rows)
    return {"wall_s": wall, "qps": len(rows) / wall, "cpu_ms_per_request": 1000 * cpu / len(rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "teacher_server.py"), "--delay", str(args.latency)],
                              stdout=subprocess.PIPE, text=True)
    try:
        base_url = f"http://127.0.0.1:{int(server.stdout.readline())}/v1"
        rows = make_problems(args.questions, image_size=224)
        measure(rows[:4], base_url, 4)  # warm-up: lazy imports and first-use costs of the openai client
        serial = measure(rows, base_url, 1)  # 13 s at 200 ms: latency-bound, steady
        # The parallel run lasts under a second, so a neighbour's CPU burst moves it a lot:
        # run it `--repeats` times and report the median and the best.
        runs = sorted((measure(rows, base_url, args.concurrency) for _ in range(args.repeats)), key=lambda r: r["wall_s"])
        parallel = runs[len(runs) // 2]
    finally:
        server.terminate()
        server.wait()

    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"cpu_count={os.cpu_count()} | python {platform.python_version()} | loadavg {os.getloadavg()[0]:.1f}")
    print(f"{args.questions} questions, {args.latency * 1000:.0f} ms server latency, 224x224 PNG per request")
    for name, r in (("concurrency 1", serial), (f"concurrency {args.concurrency}", parallel)):
        print(f"  {name:>15}: {r['wall_s']:6.2f} s  {r['qps']:7.2f} q/s  client CPU {r['cpu_ms_per_request']:.2f} ms/request")
    ratio = parallel["qps"] / serial["qps"]
    best = runs[0]["qps"] / serial["qps"]
    ideal = min(args.concurrency, args.questions)
    walls = ", ".join(f"{r['wall_s']:.2f}" for r in runs)
    print(f"  parallel walls over {len(runs)} runs: {walls} s")
    print(f"throughput ratio {args.concurrency} vs 1: {ratio:.1f}x median, {best:.1f}x best"
          f" (ideal {ideal}x; target >= 20x) -> {'PASS' if ratio >= 20 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
