"""Benchmark: distill throughput with and without length-grouped batching, and a memory estimate.

    .venv/bin/python benchmarks/train_throughput.py [--per-family 40] [--batch-size 8] [--repeats 2] [--threads 1]

Part 1 trains the embedded tiny student (params.yaml's `tiny` section) for one epoch on the
embedded sample's training split (rationales from the reference teacher) through the real
library path (svrd.distill.train), once with `train.group_by_length` true and once false, from
the same initial weights, alternating over --repeats runs (the fastest of each reported). It prints training
tokens/s (real, non-pad tokens) and the padding waste (share of pad tokens, overall and mean per
batch), with the ratio and the machine. Part 1b trains the same epoch in fp32 and under bf16
autocast (`train.precision`), alternating, and prints the ratio and what `auto` picks on this CPU.

Part 2 is arithmetic, not a measurement: the peak training memory of a 2B-class student
(SmolVLM-2.2B's architecture, parameters counted from its config built offline on the meta
device) in bf16 at batch 16, with and without LoRA and gradient checkpointing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import svrd.distill as distill  # noqa: E402
from svrd.errors import RecordError  # noqa: E402
from svrd.examples import build_examples  # noqa: E402
from svrd.images import normalize_image  # noqa: E402
from svrd.models import freeze, load_model, load_processor  # noqa: E402
from svrd.params import load_params  # noqa: E402
from svrd.prompts import format_question  # noqa: E402
from svrd.rationale import parse_rationale  # noqa: E402
from svrd.sample import generate  # noqa: E402
from svrd.sources import iter_release  # noqa: E402
from svrd.teach.reference import compose  # noqa: E402
from svrd.tiny import build_tiny_student  # noqa: E402


def sample_examples(work: Path, per_family: int, target: str, conclusion: str):
    generate(work / "sample", per_family=per_family, seed=0)
    rows = [r for r in iter_release(work / "sample") if not isinstance(r, RecordError) and r.get("image")]
    train_rows = [{**r, "image": normalize_image(r["image"], r["pid"])} for r in rows if r["split"] == "train"]
    rationales = {}
    for r in train_rows:
        parsed = parse_rationale(compose(r))
        rationales[r["pid"]] = {"summary": parsed.summary, "caption": parsed.caption, "reasoning": parsed.reasoning,
                                "conclusion": parsed.conclusion, "outcome": "agreed"}
    texts = [format_question(r) for r in train_rows] + [r[f] for r in train_rows
                                                       for f in ("lecture", "solution", "caption") if r.get(f)]
    return build_examples(train_rows, rationales, target, conclusion), texts


class BatchLog:
    """Wraps distill's Collator to record each batch's pad share."""

    def __init__(self):
        self.shares: list[float] = []
        self.tokens = 0
        self._call = distill.Collator.__call__

    def __enter__(self):
        log = self

        def call(collator, features):
            batch = log._call(collator, features)
            mask = batch["attention_mask"]
            log.shares.append(1.0 - float(mask.sum()) / mask.numel())
            log.tokens += int(mask.sum())
            return batch

        distill.Collator.__call__ = call
        return self

    def __exit__(self, *exc):
        distill.Collator.__call__ = self._call


def run_once(model_dir: Path, examples, cfg, ckpt: Path) -> dict:
    model = load_model(str(model_dir))
    processor = load_processor(str(model_dir))
    freeze(model)
    with BatchLog() as log:
        stats = distill.train(model, processor, examples, [], cfg, str(ckpt))
    return {"tokens": log.tokens, "tokens_per_s": stats["tokens_per_s"], "pad_share": stats["pad_share"], "wall_s": stats["wall_s"],
            "batch_pad_mean": statistics.mean(log.shares), "steps": stats["steps"]}


def alternate(args, params, work: Path, examples, variants: dict) -> dict:
    """One epoch per variant (name -> train.* overrides), alternating the order each repeat so that neither
    variant always runs second; returns name -> the fastest run (on a shared machine the slow runs measure
    the neighbours) and name -> every run's wall."""
    runs: dict = {name: [] for name in variants}
    names = list(variants)
    for rep in range(args.repeats):
        for name in (names if rep % 2 == 0 else names[::-1]):
            cfg = params.with_overrides({
                "train.epochs": 1, "train.batch_size": args.batch_size, "train.grad_accum": 1,
                "train.group_by_length": False, "train.save_steps": 0, "train.eval_questions": 0,
                "train.warmup_steps": 0, **variants[name],
            }).train
            runs[name].append(run_once(work / "student", examples, cfg, work / f"ckpt-{rep}-{name}"))
    return {name: min(r, key=lambda x: x["wall_s"]) for name, r in runs.items()}, \
        {name: [x["wall_s"] for x in r] for name, r in runs.items()}


def throughput(args, params, work: Path, examples, info: dict) -> None:
    best, walls = alternate(args, params, work, examples, {"true": {"train.group_by_length": True},
                                                           "false": {"train.group_by_length": False}})
    print(f"\nmachine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} intra-op threads, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"student: tiny LLaVA, {info['parameters'] / 1e6:.2f}M parameters, {info['image_tokens']} image tokens; "
          f"{len(examples)} training examples (sample, per_family={args.per_family}), batch {args.batch_size}, "
          f"1 epoch = {best['true']['steps']} steps, {best['true']['tokens']} real tokens; best of {args.repeats} "
          f"runs each (walls: grouped {walls['true']}, random {walls['false']})\n")
    print(f"| {'group_by_length':<15} | {'tokens/s':>9} | {'pad share':>9} | {'mean batch pad share':>20} | {'wall s':>7} |")
    print(f"|{'-' * 17}|{'-' * 11}|{'-' * 11}|{'-' * 22}|{'-' * 9}|")
    for name, r in best.items():
        print(f"| {name:<15} | {r['tokens_per_s']:>9.1f} | {r['pad_share']:>9.3f} | "
              f"{r['batch_pad_mean']:>20.3f} | {r['wall_s']:>7.1f} |")
    ratio = best["true"]["tokens_per_s"] / best["false"]["tokens_per_s"]
    pad_ratio = best["false"]["pad_share"] / max(1e-9, best["true"]["pad_share"])
    print(f"\ntokens/s ratio grouped/random: {ratio:.2f}x; padding waste random/grouped: {pad_ratio:.1f}x")


def precision_throughput(args, params, work: Path, examples) -> None:
    """Part 1b: the same epoch (random batches, the default) in fp32 and under bf16 autocast, alternating;
    what train.precision=auto picks on this CPU is printed beside the ratio."""
    from svrd.models import cpu_has_native_bf16, mixed_precision

    best, _ = alternate(args, params, work, examples, {"fp32": {"train.precision": "fp32"},
                                                       "bf16": {"train.precision": "bf16"}})
    print(f"\n| {'train.precision':<15} | {'tokens/s':>9} | {'wall s':>7} |")
    print(f"|{'-' * 17}|{'-' * 11}|{'-' * 9}|")
    for name, r in best.items():
        print(f"| {name:<15} | {r['tokens_per_s']:>9.1f} | {r['wall_s']:>7.1f} |")
    print(f"\ntokens/s ratio bf16/fp32: {best['bf16']['tokens_per_s'] / best['fp32']['tokens_per_s']:.2f}x "
          f"(best of {args.repeats} each); this CPU multiplies bf16 natively: {cpu_has_native_bf16()}, so "
          f"train.precision=auto trains in {mixed_precision('auto', torch.device('cpu')) or 'fp32'}")


def training_parts(args) -> None:
    """Parts 1 and 1b on one generated sample and one freshly built student (the same initial weights)."""
    params = load_params(ROOT / "params.yaml")
    t = params.tiny
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        examples, texts = sample_examples(work, args.per_family, params.train.target, params.train.conclusion)
        info = build_tiny_student(work / "student", texts, vocab_size=t.vocab_size, image_size=t.image_size,
                                  patch_size=t.patch_size, vision_width=t.vision_width,
                                  vision_layers=t.vision_layers, text_width=t.text_width, text_layers=t.text_layers,
                                  heads=t.heads, seed=t.seed)
        throughput(args, params, work, examples, info)
        precision_throughput(args, params, work, examples)


# --- memory estimate ------------------------------------------------------------------------------

GiB = 1024**3


def smolvlm_2b_config():
    """SmolVLM-Instruct (2.2B) architecture: SigLIP so400m (384 px, patch 14) + Llama 2048x24, scale 3."""
    from transformers import Idefics3Config, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    vision = Idefics3VisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                  num_attention_heads=16, image_size=384, patch_size=14)
    text = LlamaConfig(vocab_size=49155, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                       num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False)
    return Idefics3Config(vision_config=vision, text_config=text, scale_factor=3)


def memory_estimate(batch: int = 16, seq: int = 1024, r: int = 16) -> None:
    from transformers import Idefics3ForConditionalGeneration

    from svrd.lora import text_linear_names
    from svrd.models import projector, vision_encoder

    config = smolvlm_2b_config()
    with torch.device("meta"):
        model = Idefics3ForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in vision_encoder(model).parameters())
    proj = sum(p.numel() for p in projector(model).parameters())
    text = total - vision
    lora = sum(r * (m.in_features + m.out_features) for n, m in model.named_modules()
               if n in set(text_linear_names(model, "all-linear")))
    tc = config.text_config
    h, layers, vocab = tc.hidden_size, tc.num_hidden_layers, tc.vocab_size
    b, s = batch, seq

    # bytes, bf16 everywhere (the model is loaded in bf16; torch's AdamW keeps both moments in the
    # parameter dtype). Activations per decoder layer, SDPA/flash attention (no s x s score matrix
    # kept): ~34*s*b*h bytes (Korthikanti et al. 2022, 16-bit, without the 5*a*s/h attention term);
    # with checkpointing each layer keeps only its input (2*s*b*h) and one layer is recomputed at a
    # time (+34*s*b*h). Logits: bf16 logits + their fp32 upcast for the loss, 6*b*s*V. The frozen
    # vision tower keeps no activations (nothing under it needs a gradient).
    act_full = 34 * s * b * h * layers
    act_ckpt = 2 * s * b * h * layers + 34 * s * b * h
    logits = 6 * b * s * vocab

    def row(name: str, trainable: int, act: int) -> None:
        w, g, adam = 2 * total, 2 * trainable, 4 * trainable
        peak = w + g + adam + act + logits
        print(f"| {name:<28} | {trainable / 1e6:>11.1f} | {w / GiB:>7.2f} | {g / GiB:>6.2f} | {adam / GiB:>6.2f} | "
              f"{act / GiB:>11.2f} | {logits / GiB:>6.2f} | {peak / GiB:>8.1f} |")

    print(f"\nPeak training memory estimate, SmolVLM-2.2B architecture (config built offline): {total / 1e9:.3f}B "
          f"parameters = vision {vision / 1e6:.0f}M (frozen) + connector {proj / 1e6:.1f}M + text "
          f"{(text - proj) / 1e6:.0f}M; text h={h}, {layers} layers, vocab {vocab}")
    print(f"bf16, batch {b}, sequence {s} tokens (729 image tokens + prompt + rationale), LoRA r={r} on every text "
          f"linear layer = {lora / 1e6:.1f}M (+ the connector, trained in full as modules_to_save)")
    print("weights 2P, grads 2T, Adam 2x2T (T = trainable), activations 34*s*b*h*L (checkpointing: "
          "2*s*b*h*L + 34*s*b*h), logits 6*b*s*V\n")
    print(f"| {'setting':<28} | {'trainable M':>11} | {'weights':>7} | {'grads':>6} | {'Adam':>6} | "
          f"{'activations':>11} | {'logits':>6} | {'peak GiB':>8} |")
    print(f"|{'-' * 30}|{'-' * 13}|{'-' * 9}|{'-' * 8}|{'-' * 8}|{'-' * 13}|{'-' * 8}|{'-' * 10}|")
    row("full text FT (paper)", text, act_full)
    row("full text FT + checkpointing", text, act_ckpt)
    row("LoRA", lora + proj, act_full)
    row("LoRA + checkpointing", lora + proj, act_ckpt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-family", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: a tiny model on a shared machine runs fastest so)")
    parser.add_argument("--skip-train", action="store_true", help="only the memory estimate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if not args.skip_train:
        training_parts(args)
    memory_estimate()
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
