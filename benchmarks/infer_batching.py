"""Throughput of the infer path (svrd.infer.predict.predict) at batch size 32 against batch size 1.

    .venv/bin/python benchmarks/infer_batching.py [--questions 64] [--tokens 32] [--real-questions 16]

1. Fixed length: the same questions (generated sample, built into examples as the filter stage
   does) through an untrained tiny LLaVA (svrd.tiny) with min_new_tokens = max_new_tokens, so
   both batch sizes decode exactly the same number of tokens.
2. Real outputs: the distilled student (data/distill/model, when the pipeline has made it) on
   the test split, stopping at EOS as the infer stage does.
Both report questions/s, generated tokens/s, the ratio, and whether batched outputs equal
unbatched ones; batch 32 runs twice: as the infer stage decodes (finished rows leave the batch,
svrd.infer.generation.decode_pruned) and as a static batch through model.generate, which decodes
until the batch's longest answer ends. Then the arithmetic for the paper's run on one GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _run(model, processor, rows, batch_size: int, max_new_tokens: int, min_new_tokens: int,
         prune: bool = True) -> tuple[list[dict], float]:
    import functools

    import svrd.infer.generate as generate
    from svrd.infer.encoding import examples_from_rows
    from svrd.infer.generation import generate_ids
    from svrd.infer.predict import predict

    # prune=False: the batch decodes through model.generate until its longest answer ends (the path
    # before svrd.infer.generation.decode_pruned), for the comparison only.
    generate.generate_ids = functools.partial(generate_ids, prune=prune)
    try:
        t0 = time.perf_counter()
        out = predict(model, processor, examples_from_rows(rows), {r["pid"]: r["choices"] for r in rows}, "bench",
                      batch_size=batch_size, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                      progress=False)
        return out, time.perf_counter() - t0
    finally:
        generate.generate_ids = generate_ids


def compare(label: str, model, processor, rows, max_new_tokens: int, min_new_tokens: int) -> None:
    # Warm-up (first-call allocations and lazy imports are not part of either measurement).
    _run(model, processor, rows[:2], 2, 2, 0)
    results = {}
    for key, bs, prune in ((1, 1, True), (32, 32, True), ("32 static", 32, False)):
        out, seconds = _run(model, processor, rows, bs, max_new_tokens, min_new_tokens, prune)
        tokens = sum(r["new_tokens"] for r in out)
        results[key] = (out, seconds, tokens)
        print(f"  batch {key!s:>9}: {len(rows)} questions, {tokens} generated tokens in {seconds:7.2f} s = "
              f"{len(rows) / seconds:7.2f} questions/s, {tokens / seconds:8.1f} tokens/s")
    (one, s1, _), (many, s32, _), (static, s_static, _) = results[1], results[32], results["32 static"]
    same = [a["raw"] == b["raw"] and a["choice"] == b["choice"] for a, b in zip(one, many, strict=True)]
    print(f"  speed-up batch 32 / batch 1: {s1 / s32:.2f}x   batched outputs equal unbatched: "
          f"{sum(same)}/{len(same)}{'' if all(same) else ' (differ: ' + ', '.join(a['pid'] for a, ok in zip(one, same, strict=True) if not ok) + ')'}")
    print(f"  static batch 32 (model.generate until the longest answer ends) / batch 1: {s1 / s_static:.2f}x, "
          f"outputs equal: {all(a['raw'] == b['raw'] for a, b in zip(one, static, strict=True))}")
    print(f"  [{label}]")


def paper_arithmetic() -> None:
    questions, tokens, batch = 2017, 512, 32
    weights_gb, bandwidth_tb_s = 4.4, 1.5  # a 2.2B model in bf16; A100 HBM ~1.5-2.0 TB/s
    step_s = weights_gb / (bandwidth_tb_s * 1000)  # one decode step reads every weight once
    batches = -(-questions // batch)
    decode_s = batches * tokens * step_s
    prefill_s = batches * 0.15  # 32 x ~1,000 prompt tokens (729 image tokens): ~70 TFLOP/s of bf16 for 4.4 TFLOP
    print("\nThe paper's run: 2,017 test questions, up to 512 new tokens, a 2B student, 279 minutes (Moondream-kd).")
    print(f"  decode step at batch {batch}, memory-bound: {weights_gb} GB weights / {bandwidth_tb_s} TB/s "
          f"= {step_s * 1000:.1f} ms (the KV cache of 32 x 1.5k tokens adds little for a 2B model)")
    print(f"  {batches} batches x {tokens} steps x {step_s * 1000:.1f} ms = {decode_s:.0f} s decoding "
          f"+ ~{prefill_s:.0f} s prefill = {(decode_s + prefill_s) / 60:.1f} min "
          f"(worst case: every batch runs all 512 steps)")
    print(f"  vs 279 min: ~{279 * 60 / (decode_s + prefill_s):.0f}x less; add ~1 min for loading the model. "
          "Assumptions: one A100, bf16, greedy, length-sorted batches, no CPU-side per-item image decoding.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32, help="fixed generation length (untrained model)")
    ap.add_argument("--real-questions", type=int, default=32, help="0: skip the trained-student case")
    ap.add_argument("--real-max-tokens", type=int, default=256)
    args = ap.parse_args()

    import torch

    from svrd.filter import clean_record
    from svrd.models import load_model, load_processor
    from svrd.prompts import format_question
    from svrd.sample import FAMILIES, generate
    from svrd.sources import iter_release
    from svrd.tiny import build_tiny_student

    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "release", per_family=-(-args.questions // len(FAMILIES)))
        rows = [clean_record(r, True, 25_000_000) for r in iter_release(tmp / "release")][: args.questions]
        info = build_tiny_student(tmp / "tiny", [format_question(r) for r in rows] + [r["solution"] for r in rows])
        model, processor = load_model(str(tmp / "tiny")), load_processor(str(tmp / "tiny"))
        print(f"\n1. fixed length: untrained tiny LLaVA ({info['parameters'] / 1e6:.2f}M parameters, "
              f"{info['image_tokens']} image tokens), fp32, {len(rows)} sample questions, "
              f"exactly {args.tokens} new tokens each")
        compare("fixed length", model, processor, rows, args.tokens, args.tokens)

    distilled = REPO / "data/distill/model"
    test = REPO / "data/split/test.parquet"
    if args.real_questions and distilled.exists() and test.exists():
        from svrd.io import read_rows

        rows = read_rows(test)[: args.real_questions]
        model, processor = load_model(str(distilled)), load_processor(str(distilled))
        print(f"\n2. real outputs: the distilled student ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
              f"parameters), fp32, {len(rows)} test questions, greedy to EOS or {args.real_max_tokens} tokens")
        compare("real outputs", model, processor, rows, args.real_max_tokens, 0)
    else:
        print("\n2. real outputs: skipped (no data/distill/model; run `dvc repro distill` first)")
    paper_arithmetic()


if __name__ == "__main__":
    main()
