"""Real student families through the library path: load, freeze, svrd.distill.train, svrd.infer.predict.

Each family is a tiny random model built offline (tests/tiny_models.py) and saved with
save_pretrained, then loaded by folder exactly as a Hub id would be. Also: student.image_tokens,
and LoRA (merged, and saved as an adapter that load_model puts back on its base).
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import FAMILIES, corpus, fake_rationales, fake_records

from svrd.distill import save_student, train
from svrd.examples import build_examples, tokenizer_of
from svrd.infer import predict
from svrd.lora import apply_lora, text_linear_names
from svrd.models import (
    adapter_base,
    apply_image_tokens,
    count_image_tokens,
    freeze,
    load_model,
    load_processor,
    vision_encoder,
)
from svrd.params import load_params

PARAMS = load_params()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train_cfg(**overrides):
    base = {"train.epochs": 1, "train.batch_size": 2, "train.warmup_steps": 0, "train.lr": 1e-3,
            "train.save_steps": 0, "train.eval_questions": 0}
    return PARAMS.with_overrides({**base, **overrides}).train


@pytest.fixture(scope="module")
def data():
    records = fake_records(4)
    return records, build_examples(records, fake_rationales(records), "rationale", "letter_text")


@pytest.fixture(scope="module")
def built(tmp_path_factory, data):
    records, _ = data
    root = tmp_path_factory.mktemp("families")
    return {name: FAMILIES[name](root / name, corpus(records)) for name in FAMILIES}


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def text_state(model) -> dict[str, torch.Tensor]:
    vision = {id(p) for p in vision_encoder(model).parameters()}
    return {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in vision}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_trains_and_predicts(family, built, data, tmp_path):
    records, examples = data
    path = built[family]["path"]
    model = load_model(path)
    processor = load_processor(path)
    assert count_image_tokens(processor) == built[family]["image_tokens"]  # processor and model agree

    counts = freeze(model)
    assert 0 < counts["trainable"] < counts["parameters"]
    vision_before = snapshot(vision_encoder(model))
    text_before = text_state(model)

    stats = train(model, processor, examples, [], train_cfg(), str(tmp_path / "ckpt"))
    assert stats["steps"] == 2 and stats["examples"] == 4

    vision_after = vision_encoder(model).state_dict()
    assert all(torch.equal(vision_before[k], vision_after[k]) for k in vision_before)  # bit-identical
    text_after = dict(model.named_parameters())
    changed = [n for n, before in text_before.items() if not torch.equal(before, text_after[n])]
    assert any("embed" in n for n in changed) and len(changed) > len(text_before) // 2

    rows = predict(model, processor, examples, {r["pid"]: r["choices"] for r in records}, family,
                   batch_size=3, max_new_tokens=4)
    assert [r["pid"] for r in rows] == [e.pid for e in examples]
    assert all(r["model"] == family and isinstance(r["raw"], str) for r in rows)


# --- student.image_tokens -------------------------------------------------------------------------


def test_image_tokens_set_the_idefics3_resolution(built, data):
    path = built["idefics3"]["path"]
    model = load_model(path)
    processor = load_processor(path)
    info = apply_image_tokens(model, processor, 36)  # 6x6 after pixel shuffle: 48 px at patch 4, scale 2
    assert info == {"image_tokens": 36, "requested": 36, "applied": True, "image_size": 48}
    assert processor.image_seq_len == 36 and count_image_tokens(processor) == 36
    # the model runs at that resolution (token count and features agree)
    _, examples = data
    from svrd.examples import Collator, encode_training

    batch = Collator(tokenizer_of(processor).pad_token_id)([encode_training(processor, e, 512) for e in examples[:2]])
    assert batch["pixel_values"].shape[-2:] == (48, 48)
    assert torch.isfinite(model(**batch).loss)
    # the paper's 729 (27x27): nearest reachable count, exact here
    assert apply_image_tokens(model, processor, 729)["image_tokens"] == 729
    # not a square: the nearest square count
    assert apply_image_tokens(model, processor, 30)["image_tokens"] == 25


@pytest.mark.parametrize("family", ["llava", "paligemma"])
def test_image_tokens_not_applicable_to_fixed_resolution_families(built, family, caplog):
    path = built[family]["path"]
    processor = load_processor(path)
    with caplog.at_level("INFO", logger="svrd.models"):
        info = apply_image_tokens(load_model(path), processor, 729)
    assert info == {"image_tokens": built[family]["image_tokens"], "requested": 729, "applied": False}
    assert "not applicable" in caplog.text


# --- LoRA -------------------------------------------------------------------------------------------


def lora_cfg(merge: bool, target_modules="all-linear"):
    return PARAMS.with_overrides({"train.lora.enabled": True, "train.lora.merge": merge, "train.lora.r": 4,
                                  "train.lora.alpha": 8, "train.lora.target_modules": target_modules}).train.lora


def test_lora_targets_the_language_model_only(built):
    model = load_model(built["llava"]["path"])
    names = text_linear_names(model, "all-linear")
    assert names and all(n.startswith("model.language_model.") for n in names)
    assert not any("vision_tower" in n or "projector" in n or n.endswith("lm_head") for n in names)
    only_q = text_linear_names(model, ["q_proj"])
    assert only_q and all(n.endswith(".q_proj") and ".language_model." in n for n in only_q)
    with pytest.raises(ValueError, match="matches no linear layer"):
        text_linear_names(model, ["no_such_proj"])
    peft_model = apply_lora(model, lora_cfg(True))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_modules() if n.endswith(".lora_A")}
    assert adapted and all(".language_model." in n for n in adapted)
    assert len(adapted) == len(names)
    assert not any("lora" in n for n, _ in vision_encoder(peft_model).named_modules())


@pytest.mark.parametrize("merge", [True, False])
def test_lora_train_save_and_load(built, data, tmp_path, merge):
    records, examples = data
    base_path = built["llava"]["path"]
    processor = load_processor(base_path)
    original = load_model(base_path)
    model = load_model(base_path)
    freeze(model)
    model = apply_lora(model, lora_cfg(merge), train_projector=True)
    counts = freeze(model)
    assert counts["trainable"] < counts["parameters"] // 2

    train(model, processor, examples, [], train_cfg(**{"train.lr": 1e-2}), str(tmp_path / "ckpt"))
    model.eval()
    out_dir = tmp_path / "distilled"
    saved = save_student(model, processor, out_dir, merge=merge)
    files = {p.name for p in out_dir.iterdir()}
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        expected = saved(**batch).logits

    loaded = load_model(str(out_dir)).eval()
    if merge:
        assert "adapter_config.json" not in files and "model.safetensors" in files
        assert type(loaded).__name__ == "LlavaForConditionalGeneration"
        assert adapter_base(str(out_dir)) is None
    else:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
        assert json.loads((out_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == base_path
        assert type(loaded).__name__.startswith("PeftModel")
    assert any(f.startswith(("processor_config", "tokenizer", "chat_template")) for f in files)
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, expected, atol=1e-5)

    # the vision tower is the original's, bit for bit; the text model moved
    orig_vision = vision_encoder(original).state_dict()
    loaded_vision = vision_encoder(loaded).state_dict()
    assert all(torch.equal(orig_vision[k], loaded_vision[k]) for k in orig_vision)
    with torch.no_grad():
        assert not torch.allclose(original(**batch).logits, expected, atol=1e-4)

    rows = predict(loaded, load_processor(str(out_dir)), examples, {r["pid"]: r["choices"] for r in records},
                   "lora", batch_size=4, max_new_tokens=3)
    assert [r["pid"] for r in rows] == [e.pid for e in examples]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpoint_weights_come_back_on_resume(family, built, tmp_path):
    """Trainer checkpoints hold the Hub's key names; resuming must rename them back for every family
    (transformers#43701: a non-strict load skipped them and training went on from the initial weights)."""
    from transformers import TrainingArguments

    from svrd.distill import LengthGroupedTrainer

    path = built[family]["path"]
    trained = load_model(path)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    LengthGroupedTrainer(model=trained, args=args)._save(str(tmp_path / "checkpoint-1"))

    fresh = load_model(path)
    LengthGroupedTrainer(model=fresh, args=args)._load_from_checkpoint(str(tmp_path / "checkpoint-1"))
    want, got = snapshot(trained), snapshot(fresh)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_base_infer_sees_the_resolution_distill_trains_at(built, data, tmp_path, monkeypatch):
    """infer's `base` entry (path: student.model) applies student.image_tokens as distill does; the
    model folder itself is left untouched."""
    from svrd.infer import run_inference

    monkeypatch.setenv("SVRD_CACHE_DIR", str(tmp_path))
    path = built["idefics3"]["path"]
    before = count_image_tokens(load_processor(path))
    params = PARAMS.with_overrides({"student.model": path, "student.image_tokens": 36, "infer.max_new_tokens": 4,
                                    "infer.batch_size": 4})
    records, _ = data
    rows, stats = run_inference(params, "base", [{**r, "split": "test"} for r in records[:2]])
    assert [r["pid"] for r in rows] == [r["pid"] for r in records[:2]]
    assert stats["image_tokens"] == 36 != before
    assert count_image_tokens(load_processor(path)) == before


def test_lora_init_is_drawn_from_the_seed(built):
    path = built["llava"]["path"]

    def adapters(seed):
        model = apply_lora(load_model(path), lora_cfg(True), seed=seed)
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    before = torch.random.get_rng_state()
    first, again, other = adapters(3), adapters(3), adapters(4)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG did not move
