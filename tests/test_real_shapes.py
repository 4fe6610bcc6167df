"""Students at the real image shapes of SmolVLM-256M, LLaVA-1.5 and PaliGemma-224 (tests/real_students.py:
published processor settings, narrow random layers), on 640x480 images as ScienceQA photos come.

Each family reports the image tokens it really used, none sees a tile or crop above its encoder's
native size, and each trains and generates on a CPU through the library path. Expected counts are
worked out by hand from the published values, beside each.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from real_students import LLAVA_15, PALIGEMMA_224, REAL_FAMILIES, SMOLVLM_256M
from tiny_models import corpus, fake_rationales, fake_records

from svrd.distill import train
from svrd.examples import build_examples, encode_prompt
from svrd.images import png_bytes
from svrd.infer.predict import predict
from svrd.models import apply_image_tokens, freeze, load_model, load_processor
from svrd.params import load_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PHOTO = (640, 480)
# SmolVLM-256M: 640x480 -> longest edge 2048 -> 2048x1536 -> 4 x 3 tiles of 512 + a global view = 13 x 64
NATIVE_TOKENS = {"smolvlm-256m": 13 * SMOLVLM_256M["image_seq_len"],
                 "llava-1.5": (LLAVA_15["image_size"] // LLAVA_15["patch_size"]) ** 2,  # 24^2 = 576
                 "paligemma-224": (PALIGEMMA_224["image_size"] // PALIGEMMA_224["patch_size"]) ** 2}  # 16^2 = 256
NATIVE_SIDE = {"smolvlm-256m": 512, "llava-1.5": 336, "paligemma-224": 224}


def photo_records(n: int = 3) -> list[dict]:
    records = fake_records(n)
    for i, r in enumerate(records):
        r["image"] = png_bytes(Image.new("RGB", PHOTO, (40 * i, 120, 200)))
    return records


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    records = photo_records()
    root = tmp_path_factory.mktemp("real")
    return {name: build(root / name, corpus(records)) for name, build in REAL_FAMILIES.items()}, records


def pixel_side(processor, records) -> int:
    ex = build_examples(records[:1], fake_rationales(records[:1]), "rationale", "letter")[0]
    return max(encode_prompt(processor, ex)["pixel_values"].shape[-2:])


@pytest.mark.parametrize("family", sorted(REAL_FAMILIES))
def test_native_processing_reports_the_tokens_it_uses(real, family):
    built, records = real
    path = built[family]["path"]
    model, processor = load_model(path), load_processor(path)
    info = apply_image_tokens(model, processor, None)
    assert info["image_tokens"] == NATIVE_TOKENS[family] == built[family]["image_tokens_640x480"]
    assert info["how"] == "native processing" and not info["applied"]
    assert pixel_side(processor, records) == NATIVE_SIDE[family] == model.config.vision_config.image_size


@pytest.mark.parametrize("family", sorted(REAL_FAMILIES))
def test_a_729_budget_never_upscales_past_the_encoder(real, family):
    """The paper's 729 (Moondream's SigLIP 378/14) on each family: SmolVLM caps its tiles at 3x3
    ((9 + 1) x 64 = 640 <= 729 < (16 + 1) x 64); a 640x480 image -> 1536x1152 -> 3 x 3 tiles + global =
    640 tokens, each tile still 512 px. LLaVA and PaliGemma have no such knob and keep 576 / 256."""
    built, records = real
    path = built[family]["path"]
    model, processor = load_model(path), load_processor(path)
    info = apply_image_tokens(model, processor, 729)
    expected = {"smolvlm-256m": 10 * 64, "llava-1.5": 576, "paligemma-224": 256}[family]
    assert info["image_tokens"] == expected
    assert info["applied"] == (family == "smolvlm-256m")
    assert pixel_side(processor, records) <= model.config.vision_config.image_size


def test_smolvlm_paper_prompt_is_over_512_tokens(real):
    """Why train.max_length defaults to null: one 4:3 image alone is 832 tokens on SmolVLM-256M."""
    built, records = real
    processor = load_processor(built["smolvlm-256m"]["path"])
    ex = build_examples(records[:1], fake_rationales(records[:1]), "rationale", "letter")[0]
    assert len(encode_prompt(processor, ex)["input_ids"][0]) > 832 > 512


@pytest.mark.parametrize("family", sorted(REAL_FAMILIES))
def test_real_shapes_train_and_generate(real, family, tmp_path):
    """A step of distill (all of the examples' real lengths, null max_length) and a short generation."""
    built, records = real
    path = built[family]["path"]
    model, processor = load_model(path), load_processor(path)
    freeze(model)
    examples = build_examples(records[:2], fake_rationales(records[:2]), "rationale", "letter")
    cfg = load_params().with_overrides({"train.epochs": 1, "train.batch_size": 2, "train.warmup_steps": 0,
                                        "train.lr": 1e-3, "train.save_steps": 0, "train.eval_questions": 0,
                                        "train.max_length": None}).train
    before = model.get_input_embeddings().weight.detach().clone()
    stats = train(model, processor, examples, [], cfg, str(tmp_path / "ckpt"))
    assert stats["steps"] == 1 and stats["truncated_targets"] == 0
    assert stats["max_length"] > NATIVE_TOKENS[family]  # the longest example, image tokens included
    assert not torch.equal(before, model.get_input_embeddings().weight)
    rows = predict(model.eval(), processor, examples, {r["pid"]: r["choices"] for r in records}, family,
                   batch_size=2, max_new_tokens=3)
    assert [r["pid"] for r in rows] == [e.pid for e in examples]


def test_smolvlm_prompt_lengths_follow_the_image_size(real):
    """SmolVLM's tile count depends on the image's shape; the length check's shortcut (per-size image
    tokens from the processor) must equal the processor's real output for each shape."""
    from svrd.examples import Example, PromptLengths

    built, _ = real
    processor = load_processor(built["smolvlm-256m"]["path"])
    shapes = [(640, 480), (480, 640), (1000, 200)]  # 4x3, 3x4 and 4x1 tiles (+ a global view)
    examples = [Example(str(i), png_bytes(Image.new("RGB", s)), "Which is it? " * (i + 1)) for i, s in enumerate(shapes)]
    measure = PromptLengths(processor)
    real_lengths = [len(encode_prompt(processor, ex)["input_ids"][0]) for ex in examples]
    assert [measure(ex) for ex in examples] == real_lengths
    assert len(set(real_lengths)) == len(shapes)
