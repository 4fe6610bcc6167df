"""Real student families through the library path: load, freeze, svrd.distill.train, svrd.infer.predict.predict.

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
from svrd.infer.predict import predict
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
    # fp32: these tests compare logits to 1e-5, and on a CPU with native bf16 `auto` trains under bf16
    # autocast, which accelerate leaves on the trained model's forward
    base = {"train.epochs": 1, "train.batch_size": 2, "train.warmup_steps": 0, "train.lr": 1e-3,
            "train.save_steps": 0, "train.eval_questions": 0, "train.precision": "fp32"}
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
    """A budget below one tile (16 tokens: 32 px / patch 4 / scale 2, squared) gives one smaller image;
    above it, a cap on tiles of the native 32 px (never a larger tile)."""
    path = built["idefics3"]["path"]
    model = load_model(path)
    processor = load_processor(path)
    info = apply_image_tokens(model, processor, 9)  # 3x3 after pixel shuffle: 3 * 4 * 2 = 24 px
    assert info == {"family": "idefics3", "image_tokens": 9, "requested": 9, "applied": True,
                    "how": "one 24px image, no tiling (9 tokens; native tiles are 32px)"}
    assert processor.image_seq_len == 9 and count_image_tokens(processor) == 9
    # the model runs at that resolution (token count and features agree)
    _, examples = data
    from svrd.examples import Collator, encode_training

    batch = Collator(tokenizer_of(processor).pad_token_id)([encode_training(processor, e, 512) for e in examples[:2]])
    assert batch["pixel_values"].shape[-2:] == (24, 24)
    assert torch.isfinite(model(**batch).loss)
    # the paper's 729: at most 6x6 tiles of 32 px (37 * 16 = 592 <= 729 < 50 * 16); a 640x480 image is resized
    # to 192x144 -> 6 x 5 tiles + the global view = 31 * 16 = 496 tokens, every tile 32 px
    fresh = load_processor(path)
    info = apply_image_tokens(model, fresh, 729)
    assert info["image_tokens"] == 496 and info["applied"]
    from PIL import Image

    pixels = fresh(images=[Image.new("RGB", (640, 480))], text=["<image>"], return_tensors="pt")["pixel_values"]
    assert pixels.shape[1:] == (31, 3, 32, 32)
    # between one and two tiles' worth: one native tile, not a larger image
    assert apply_image_tokens(model, load_processor(path), 30)["image_tokens"] == 16


@pytest.mark.parametrize("family", ["llava", "paligemma"])
def test_image_tokens_not_applicable_to_fixed_resolution_families(built, family, caplog):
    path = built[family]["path"]
    processor = load_processor(path)
    with caplog.at_level("INFO", logger="svrd.models"):
        info = apply_image_tokens(load_model(path), processor, 729)
    assert info["image_tokens"] == built[family]["image_tokens"]
    assert info["requested"] == 729 and not info["applied"] and info["how"].startswith("not applicable")
    assert "not applicable" in caplog.text
    assert apply_image_tokens(load_model(path), processor, None)["how"] == "native processing"


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
    from svrd.infer.run import run_inference

    monkeypatch.setenv("SVRD_CACHE_DIR", str(tmp_path))
    path = built["idefics3"]["path"]
    before = count_image_tokens(load_processor(path))
    params = PARAMS.with_overrides({"student.model": path, "student.image_tokens": 9, "infer.max_new_tokens": 4,
                                    "infer.batch_size": 4})
    records, _ = data
    rows, stats = run_inference(params, "base", [{**r, "split": "test"} for r in records[:2]])
    assert [r["pid"] for r in rows] == [r["pid"] for r in records[:2]]
    assert stats["image_tokens"] == 9 != before
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


# --- ranks and stop tokens --------------------------------------------------------------------------


def test_each_rank_loads_onto_its_own_gpu(monkeypatch):
    """Under torchrun / accelerate launch (LOCAL_RANK set) a rank's device is its own GPU, as accelerate
    picks it; before, every rank first loaded its copy onto cuda:0."""
    from svrd.models import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pick_device() == torch.device("cuda", 3)
    monkeypatch.delenv("LOCAL_RANK")
    assert pick_device() == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pick_device() == torch.device("cpu")


def test_the_student_is_loaded_onto_the_chosen_device(built, monkeypatch):
    import svrd.models as models

    monkeypatch.setattr(models, "pick_device", lambda: torch.device("meta"))  # stands for the rank's GPU
    params = PARAMS.with_overrides({"student.model": built["llava"]["path"]})
    model, _, _, _ = models.load_student(params.student, "auto")
    assert {p.device for p in model.parameters()} == {torch.device("meta")}


def test_generation_stops_at_any_of_the_models_stop_tokens(built, data):
    """A model whose generation config lists two stop tokens [EOS, b] stops at b (Llama 3's
    <|eot_id|>): the tokenizer's single EOS no longer overrides the model's list."""
    from svrd.infer.encoding import encode_batch
    from svrd.infer.generation import eos_ids, generate_ids

    path = built["idefics3"]["path"]
    model, processor = load_model(path).eval(), load_processor(path)
    with torch.random.fork_rng(), torch.no_grad():  # larger random weights: an output that varies (8 tokens)
        torch.manual_seed(0)
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3 if "embed" in name else 0.08)
    tok = tokenizer_of(processor)
    _, examples = data
    inputs = encode_batch(processor, examples[:1])
    free = generate_ids(model, processor, inputs, max_new_tokens=8)[0]  # stops only at the tokenizer's EOS
    assert len(free) == 8 and tok.eos_token_id not in free
    k = next(i for i in range(3, len(free)) if free[i] not in free[:i])  # b first appears at position k >= 3
    b = free[k]
    model.generation_config.eos_token_id = [tok.eos_token_id, b]
    assert eos_ids(model, tok) == [tok.eos_token_id, b]
    steps = []  # what the infer path runs (svrd.infer.generation.decode_pruned): one forward per token
    hook = model.register_forward_hook(lambda *a: steps.append(1))
    assert generate_ids(model, processor, inputs, max_new_tokens=8)[0] == free[:k]
    hook.remove()
    assert len(steps) == k + 1  # decoding itself ended at b
    generate, lengths = model.generate, []  # and through model.generate (a model decode_pruned does not take)
    model.generate = lambda **kw: lengths.append(len((out := generate(**kw))[0])) or out
    assert generate_ids(model, processor, inputs, max_new_tokens=8, prune=False)[0] == free[:k]
    assert lengths == [inputs["input_ids"].shape[1] + k + 1]  # generation itself ended at b (one sequence: no padding)
    model.generation_config.eos_token_id = None  # a model that names none: the tokenizer's
    assert eos_ids(model, tok) == [tok.eos_token_id]


def test_image_tokens_budget_is_qwen2_vl_max_pixels():
    """Qwen2-VL's processor gives one token per 28x28 pixels (patch 14, merge 2): a budget of 256 tokens is
    max_pixels 256 * 784; its own output for a 640x480 image then stays within the budget (the
    native setting gives (480 / 28 -> 17) x (640 / 28 -> 23) = 391; torchvision-free: image processor only)."""
    from types import SimpleNamespace

    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from svrd.models import _apply_pixel_budget, _is_pixel_budget

    def tokens(image_processor) -> int:
        grid = image_processor(images=[Image.new("RGB", (640, 480))], return_tensors="pt")["image_grid_thw"][0]
        return int(grid.prod()) // image_processor.merge_size**2

    processor = SimpleNamespace(image_processor=Qwen2VLImageProcessorPil())
    assert _is_pixel_budget(processor) and tokens(processor.image_processor) == 17 * 23
    how = _apply_pixel_budget(processor, 256)
    assert "max_pixels=200704" in how
    assert 0.9 * 256 <= tokens(processor.image_processor) <= 256
