"""Can the tiny student learn to read the sample's images, and how many steps does it take? A fresh
student of the default shape (tiny.*) is pre-trained on captions of freshly generated images (never
the sample's own), as stage tiny_student pre-trains it, then captions held-out images greedily;
per family it prints the share of captions whose deciding facts are right.

    python scripts/reading_probe.py                          # 1,300 images a family, 396 steps
    python scripts/reading_probe.py --images 700 --steps 1100
    python scripts/reading_probe.py --families my_families.py   # a redrawn families module

Deciding facts, per family: both beakers' particle counts (chemistry), every bar's value with its
month (earth-science), every state with its place (geography; the share of state-place pairs right
is printed too), every arrow (biology), the poles in order (physics). Each image is seen
round(steps x batch / images) times. Needs no pipeline output; about 3 min on 2 cores at 396
steps, 8 at 1,100.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import re
import shutil
import sys
import tempfile
import time

from svrd.examples import Example
from svrd.infer.generation import generate_batch
from svrd.models import load_model, load_processor
from svrd.params import load_params
from svrd.sample import FIRST_PID, build_records
from svrd.sample.families import FAMILIES
from svrd.tiny import build_tiny_student, pretrain_captions, training_text

HELD_OUT = 30  # images a family captioned after training


def deciding_facts(topic: str, caption: str):
    """What a caption must get right for the family's question to be answerable from it."""
    if topic == "chemistry":
        return re.findall(r"Solution [AB] has (\d+)", caption)
    if topic == "earth-science":
        return re.findall(r"(\w+) has (\d+) ?(?:°C|mm)", caption)
    if topic == "geography":
        return sorted(re.findall(r"(\w+) \(\w+\) at ([\w ]+?)(?:,|\.| and)", caption))
    if topic == "biology":
        arrows = caption.split("Arrows point from")[-1].replace(", and ", ", ").replace(" and ", ", ")
        return sorted(a.strip(" .") for a in arrows.split(", "))
    return caption


def load_families(path: str | None):
    if path is None:
        return FAMILIES
    spec = importlib.util.spec_from_file_location("probe_families", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["probe_families"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module.FAMILIES


def main() -> None:
    params = load_params()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1300, help="fresh training images a family")
    ap.add_argument("--steps", type=int, default=396, help="pre-training steps (the default's: 396)")
    ap.add_argument("--families", help="a families module to draw from (default: svrd.sample.families)")
    ap.add_argument("--seed", type=int, default=7, help="generation seed (the sample's own is data.sample.seed)")
    args = ap.parse_args()
    pre = params.tiny.pretrain
    families = load_families(args.families)

    train_rows, train, held_out = [], [], []
    for pid, record, caption, png in build_records(args.images + HELD_OUT, args.seed, families):
        example = Example(pid, png, pre.prompt, caption.strip())
        if (int(pid) - FIRST_PID) // len(families) < args.images:
            train_rows.append({**record, "caption": caption})
            train.append(example)
        else:
            held_out.append((example, record["topic"]))
    epochs = max(1, round(args.steps * pre.batch_size / len(train)))
    examples = train[: args.steps * pre.batch_size] if epochs == 1 else train

    shape = params.tiny.model_dump(exclude={"pretrain"})
    work = tempfile.mkdtemp(prefix="reading_probe_")
    try:
        info = build_tiny_student(f"{work}/model", training_text(train_rows), **shape)  # as stage tiny_student
        start = time.time()
        stats = pretrain_captions(f"{work}/model", examples, [e for e, _ in held_out],
                                  pre.model_copy(update={"epochs": epochs}), params.tiny.seed, f"{work}/ckpt", None)
        wall = time.time() - start
        model, processor = load_model(f"{work}/model").eval(), load_processor(f"{work}/model")
        right, pairs = collections.defaultdict(list), [0, 0]
        for i in range(0, len(held_out), 32):
            batch = held_out[i:i + 32]
            for (example, topic), got in zip(batch, generate_batch(model, processor, [e for e, _ in batch], 96)[0],
                                             strict=True):
                want, have = deciding_facts(topic, example.target), deciding_facts(topic, got.strip())
                right[topic].append(want == have)
                if topic == "geography":
                    pairs[0] += len(set(want) & set(have))
                    pairs[1] += len(want)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    shares = ", ".join(f"{t} {100 * sum(v) / len(v):.0f}%" for t, v in sorted(right.items()))
    print(f"{info['parameters'] / 1e6:.2f}M parameters, {len(examples)} captions x {epochs} epochs = {stats['steps']} "
          f"steps, caption val loss {stats.get('val_loss')}, {wall:.0f} s. Deciding facts right on {HELD_OUT} "
          f"held-out images a family: {shares}; geography state-place pairs {100 * pairs[0] / max(pairs[1], 1):.0f}%")


if __name__ == "__main__":
    main()
