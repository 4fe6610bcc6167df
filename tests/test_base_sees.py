"""CI guard that the base student learns to see: its caption pre-training, at the default's real
shapes (128-px images, 16-px patches, the default widths), must make a caption cheaper to predict
with its own image than with another image of the same family.

A companion run shows the guard can fail: with the captions shuffled across images the target no
longer depends on the image. Measured here (104 steps, one thread, about 50 s a run): a
right-vs-wrong image gap of 0.097 nats per caption token for the default and 0.0014 shuffled.
(Length-grouped batches, every batch one family, used to be a second failing companion: at the
old 0.02 init the student then learnt the captions without the image, gap 0.00003. With the
default `tiny.init_std` it sees either way, gap 0.056, so that run no longer shows a failure.)

The oracle is the model's own loss under two inputs; nothing in svrd computes it.
"""

from __future__ import annotations

import random

import pytest
import torch

from svrd.examples import encode_training
from svrd.models import load_model, load_processor
from svrd.params import load_params
from svrd.sample import build_records
from svrd.sample.families import FAMILIES
from svrd.tiny import build_tiny_student, caption_examples, pretrain_captions

# Two families whose captions differ in length (so length grouping makes one-family batches).
GUARD_FAMILIES = tuple(f for f in FAMILIES if f.name in ("magnets", "concentration"))
PER_FAMILY = 120
HELD_OUT = 40
EPOCHS = 8  # 200 training images, batch 16: 104 optimizer steps
MIN_GAP = 0.02  # nats per caption token; the default measures 0.097, shuffled captions 0.0014

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # two 2-thread workers on 2 cores thrash


def _image_gap(model, processor, rows: list[dict], prompt: str) -> float:
    """Mean caption loss with another image of the same family minus with the caption's own image."""
    encoded = [encode_training(processor, e, None) for e in caption_examples(rows, prompt)]
    partner = {}  # each example's image is swapped for the next one of its family (cyclically)
    for family in {r["topic"] for r in rows}:
        members = [i for i, r in enumerate(rows) if r["topic"] == family]
        partner.update(zip(members, members[1:] + members[:1], strict=True))
    gap = 0.0
    model.eval()
    with torch.no_grad():
        for i, enc in enumerate(encoded):
            own, other = (model(input_ids=enc["input_ids"][None], pixel_values=pixels, labels=enc["labels"][None]).loss
                          for pixels in (enc["pixel_values"], encoded[partner[i]]["pixel_values"]))
            gap += other.item() - own.item()
    return gap / len(encoded)


@pytest.mark.parametrize("broken", [None, "shuffled captions"])
def test_caption_pretraining_makes_the_base_use_its_image(tmp_path, broken):
    torch.manual_seed(0)
    rows = [{"pid": pid, "image": png, "caption": caption, "topic": record["topic"]}
            for pid, record, caption, png in build_records(PER_FAMILY, 0, GUARD_FAMILIES)]
    train_rows, held = rows[:-HELD_OUT], rows[-HELD_OUT:]
    if broken == "shuffled captions":
        captions = [r["caption"] for r in train_rows]
        random.Random(0).shuffle(captions)
        train_rows = [{**r, "caption": c} for r, c in zip(train_rows, captions, strict=True)]

    params = load_params()
    out = tmp_path / "student"
    build_tiny_student(out, [r["caption"] for r in rows], **params.tiny.model_dump(exclude={"pretrain"}))
    pre = params.tiny.pretrain.model_copy(update={"epochs": EPOCHS, "save_steps": 0})  # the default's batching
    stats = pretrain_captions(out, caption_examples(train_rows, pre.prompt), [], pre, 0, tmp_path / "ck")
    assert stats["steps"] == 104

    gap = _image_gap(load_model(str(out)), load_processor(str(out)), held, pre.prompt)
    if broken is None:
        assert gap > MIN_GAP, f"the base does not use its image: gap {gap:.4f} nats"
    else:
        assert gap < MIN_GAP, f"{broken}: the guard would pass a base that cannot see (gap {gap:.4f})"
