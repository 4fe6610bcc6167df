"""Benchmark: distill training tokens/s with and without cached frozen vision features.

    .venv/bin/python -m benchmarks.vision_cache [--quick] [--json]

Trains a tiny LLaVA student (vision encoder frozen, projector trained: features cached *before*
the projector, the default student.freeze_projector false) for several epochs on synthetic
image questions through the real library path (svrd.distill.train), once live (pixel_values
through the vision tower every step) and once with train.cache_vision_features (features written
by svrd.features.write_features, as the features stage does, then read by distill), from the same
initial weights, in one process. Reported per variant:

- training tokens/s (real, non-pad tokens over the Trainer's wall time) live vs cached: the ratio
  is the speed-up of every epoch and of every later `dvc exp` sweep that reuses the cache;
- the same with the one-off cache fill (vision tower once per image) added to the cached run's
  time: the speed-up of a single run that starts from an empty cache.

Variants: `tiny` is params.yaml's tiny student (128 px, 16-px patches, vision width 64 x 2 layers): its vision
tower is a small share of the compute, so the ratio is modest. `big_vision` gives the tower the
weight it has in real VLMs (128 px, patch 16, width 256 x 4 layers, same text model).
Target (full run, big_vision): >= 1.5x.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

torch.set_num_threads(1)  # before main_for prints the machine line (2 shared cores)

from benchmarks.common import main_for, row  # noqa: E402

TARGET = 1.5
COLORS = ["red", "green", "blue", "yellow"]
RGB = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 30)]


def records(n: int, seed: int = 0) -> list[dict]:
    """ScienceQA-shaped image questions with distinct images (so every image is its own cache entry)."""
    from PIL import Image, ImageDraw

    from svrd.images import png_bytes

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        answer = rng.randrange(len(COLORS))
        img = Image.new("RGB", (96 + rng.randrange(64), 80 + rng.randrange(64)), (250, 250, 250))
        x, y = rng.randrange(40), rng.randrange(30)
        ImageDraw.Draw(img).rectangle([x, y, x + 40, y + 40], fill=RGB[answer])
        rows.append({"pid": str(10_000 + i), "question": "Which color is the square in the picture?",
                     "hint": "Look at the square." if i % 2 else "", "choices": COLORS, "answer": answer,
                     "image": png_bytes(img), "split": "train", "lecture": "",
                     "solution": f"The square is {COLORS[answer]}, so the answer is {COLORS[answer]}."})
    return rows


def rationales(rows: list[dict]) -> dict[str, dict]:
    return {r["pid"]: {"pid": r["pid"], "summary": "The question asks for the color of the square.",
                       "caption": "A colored square on a white background.", "reasoning": r["solution"],
                       "conclusion": "", "outcome": "agreed"} for r in rows}


def measure(variant: str, tiny_kwargs: dict, n: int, epochs: int, work: Path) -> dict:
    import svrd.distill as distill
    from svrd.examples import build_examples
    from svrd.features import write_features
    from svrd.io import write_table
    from svrd.models import freeze, load_model, load_processor
    from svrd.params import load_params
    from svrd.tiny import build_tiny_student

    rows = records(n)
    examples = build_examples(rows, rationales(rows), "rationale", "text")
    student = work / f"student_{variant}"
    build_tiny_student(student, [ex.prompt + "\n" + ex.target for ex in examples] * 4, **tiny_kwargs)
    cfg = load_params().with_overrides({"train.epochs": epochs, "train.batch_size": 8, "train.save_steps": 0,
                                        "train.warmup_steps": 0, "train.group_by_length": False}).train
    table = work / f"train_{variant}.parquet"
    write_table(table, rows)
    out = {}
    for cached in (False, True):
        torch.manual_seed(0)
        model = load_model(str(student))
        processor = load_processor(str(student))
        freeze(model, vision=True, projector_too=False)
        features, fill = work / f"features_{variant}", None
        if cached:  # what the features stage does, once per student
            fill = write_features(model, processor, {"train": table}, features, work / "cache", variant)["seconds"]
        stats = distill.train(model, processor, examples, [], cfg, str(work / f"ckpt_{variant}_{cached}"),
                              vision_cache=features if cached else None)
        out[cached] = {**stats, "fill_s": fill}
        print(f"  {variant:10s} {'cached' if cached else 'live  '}: {stats['tokens_per_s']:8.1f} tokens/s "
              f"({stats['steps']} steps, train {stats['wall_s']} s"
              + (f", cache fill {fill} s for {stats['vision_cache']['images']} images" if cached else "")
              + f"), train loss {stats['train_loss']}", flush=True)
    live, cached = out[False], out[True]
    tokens = live["tokens_per_s"] * live["wall_s"]  # same batches both ways
    return {"live": live["tokens_per_s"], "cached": cached["tokens_per_s"],
            "cached_with_fill": round(tokens / (cached["wall_s"] + cached["fill_s"]), 1),
            "loss_live": live["train_loss"], "loss_cached": cached["train_loss"], "steps": live["steps"]}


VARIANTS = {
    # params.yaml's tiny student (the projector reads the patch embeddings: the tower's layers are
    # computed live and skipped when cached)
    "tiny": dict(vocab_size=1200, image_size=128, patch_size=16, vision_width=64, vision_layers=2,
                 text_width=128, text_layers=4, heads=4, vision_feature_layer=-3),
    # the vision tower carries the weight it has in real VLMs
    "big_vision": dict(vocab_size=1200, image_size=128, patch_size=16, vision_width=256, vision_layers=4,
                       text_width=128, text_layers=4, heads=4),
}


def run(quick: bool) -> list[dict]:
    torch.set_num_threads(1)
    n, epochs = (16, 2) if quick else (48, 4)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant, kwargs in VARIANTS.items():
            r = measure(variant, kwargs, n, epochs, Path(tmp))
            ratio = round(r["cached"] / r["live"], 2)
            note = (f"{n} examples x {epochs} epochs, batch 8, {r['steps']} steps, 1 thread; "
                    f"train loss live {r['loss_live']} / cached {r['loss_cached']}" + (" (quick)" if quick else ""))
            applies = variant == "big_vision" and not quick
            rows.append(row(f"vision_cache.{variant}.tokens_per_s", r["cached"], r["live"], ratio,
                            f">= {TARGET}x" if variant == "big_vision" else "report", "tokens/s", note,
                            passed=(ratio >= TARGET) if applies else None))
            rows.append(row(f"vision_cache.{variant}.tokens_per_s_incl_fill", r["cached_with_fill"], r["live"],
                            round(r["cached_with_fill"] / r["live"], 2), "report", "tokens/s",
                            "one run from an empty cache: the cache fill counted in the cached run's time"))
    return rows


if __name__ == "__main__":
    sys.exit(main_for(run, __doc__.splitlines()[0]))
