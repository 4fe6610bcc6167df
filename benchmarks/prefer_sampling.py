"""Benchmark: prefer's chain sampling, batched against one chain at a time, on the tiny student.

    .venv/bin/python benchmarks/prefer_sampling.py [--questions 8] [--k 4] [--batch-size 8] [--max-new-tokens 32]
                                                   [--threads 1]

Builds the embedded tiny student (params.yaml `tiny` section, random weights) in a temporary
folder, then samples `k` chains for each of `--questions` fake ScienceQA-shaped questions twice:

- batched: svrd.prefer.sample_chains as the stage runs it (`--batch-size` questions per
  generate() call, num_return_sequences=k);
- one at a time: one generate() call per chain (batch 1, k=1, called k times per question).

Every chain is forced to exactly `--max-new-tokens` tokens (min_new_tokens), so both do the same
work. Prints chains/s for each, the ratio, and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from tiny_models import corpus, fake_records  # noqa: E402

from svrd.infer.encoding import examples_from_rows  # noqa: E402
from svrd.models import load_model, load_processor, pick_device  # noqa: E402
from svrd.params import load_params  # noqa: E402
from svrd.prefer import sample_chains  # noqa: E402
from svrd.tiny import build_tiny_student  # noqa: E402


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--k", type=int, default=4, help="chains per question")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per generate() call when batched")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); on a shared, loaded CPU 1 is often faster")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tiny = load_params(ROOT / "params.yaml").tiny
    records = fake_records(args.questions)
    examples = examples_from_rows(records)
    device = pick_device()
    with tempfile.TemporaryDirectory() as tmp:
        info = build_tiny_student(Path(tmp) / "student", corpus(records), **tiny.model_dump())
        model = load_model(str(Path(tmp) / "student")).to(device).eval()
        processor = load_processor(str(Path(tmp) / "student"))
    n, k, new = args.questions, args.k, args.max_new_tokens
    common = {"temperature": args.temperature, "top_p": 1.0, "max_new_tokens": new, "min_new_tokens": new,
              "progress": False}

    # warm-up (first-call allocations), not timed
    sample_chains(model, processor, examples[:1], k=1, batch_size=1, **common)

    def batched():
        chains = sample_chains(model, processor, examples, k=k, batch_size=args.batch_size, **common)
        assert sum(len(c) for c in chains.values()) == n * k

    def one_at_a_time():
        for seed in range(k):  # k calls per question, each a single chain
            sample_chains(model, processor, examples, k=1, batch_size=1, seed=seed, **common)

    t_batched = timed(batched)
    t_single = timed(one_at_a_time)
    chains = n * k
    rate_b, rate_s = chains / t_batched, chains / t_single
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
          + (f", load average {load[0]:.1f}" if load else ""))
    print(f"student: tiny LLaVA, {info['parameters'] / 1e6:.2f}M parameters, {info['image_tokens']} image tokens; "
          f"{n} questions x {k} chains x {new} new tokens, temperature {args.temperature}")
    print(f"batched ({args.batch_size} questions x {k} chains per generate): {rate_b:8.1f} chains/s "
          f"({t_batched:.2f} s, {chains * new / t_batched:.0f} tokens/s)")
    print(f"one chain at a time:                      {rate_s:8.1f} chains/s "
          f"({t_single:.2f} s, {chains * new / t_single:.0f} tokens/s)")
    print(f"ratio: {rate_b / rate_s:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
