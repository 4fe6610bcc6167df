"""Cached frozen vision features (svrd.features): same loss as the live path, exact-only guards, reuse."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, build_llava, corpus, fake_rationales, fake_records

from svrd.errors import SvrdError
from svrd.examples import Collator, TrainingDataset, build_examples, tokenizer_of
from svrd.features import (
    CachedFeatureDataset,
    FeatureStore,
    cache_mode,
    check_params,
    fill,
    fingerprint,
    install,
    prepare,
)
from svrd.models import freeze, load_model, load_processor, projector, vision_encoder
from svrd.params import load_params

torch.set_num_threads(1)

RECORDS = fake_records(6)
EXAMPLES = build_examples(RECORDS, fake_rationales(RECORDS), "rationale", "letter_text")
MAX_LEN = 256


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """family -> folder of a tiny saved student."""
    root = tmp_path_factory.mktemp("students")
    return {name: FAMILIES[name](root / name, corpus(RECORDS))["path"] for name in FAMILIES}


def student(path, freeze_projector: bool):
    torch.manual_seed(0)
    model = load_model(str(path))
    processor = load_processor(str(path))
    freeze(model, vision=True, projector_too=freeze_projector)
    return model, processor


def batch_of(dataset, idx):
    return Collator(tokenizer_of(dataset.processor).pad_token_id)([dataset[i] for i in idx])


def loss_and_grads(model, batch):
    model.zero_grad()
    model.train()
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads


@pytest.mark.parametrize("freeze_projector", [True, False], ids=["after_projector", "before_projector"])
@pytest.mark.parametrize("family", ["llava", "idefics3", "paligemma"])
def test_cached_features_give_the_live_loss_and_gradients(built, tmp_path, family, freeze_projector):
    model, processor = student(built[family], freeze_projector)
    store = FeatureStore(tmp_path, fingerprint(model, processor, cache_mode(model)), cache_mode(model))
    assert store.mode == ("projected" if freeze_projector else "vision")
    fill(model, processor, EXAMPLES, store)
    live = batch_of(TrainingDataset(processor, EXAMPLES, MAX_LEN), [0, 1, 2, 3])
    cached = batch_of(CachedFeatureDataset(processor, EXAMPLES, MAX_LEN, store), [0, 1, 2, 3])
    assert "pixel_values" in live and "pixel_values" not in cached and "vision_features" in cached
    assert torch.equal(live["input_ids"], cached["input_ids"]) and torch.equal(live["labels"], cached["labels"])

    live_loss, live_grads = loss_and_grads(model, live)
    handle = install(model, store)
    try:
        cached_loss, cached_grads = loss_and_grads(model, cached)
    finally:
        handle.remove()
    assert abs(live_loss - cached_loss) < 1e-5, (live_loss, cached_loss)
    assert live_grads.keys() == cached_grads.keys()
    if not freeze_projector:  # the projector trains on the cached tower output: its gradients too
        assert any(n for n in cached_grads if any(n.startswith(m) for m in ("model.multi_modal_projector",
                                                                            "model.connector")))
    for name, g in live_grads.items():
        torch.testing.assert_close(cached_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("freeze_projector", [True, False], ids=["after_projector", "before_projector"])
def test_a_short_training_run_gives_the_same_losses_step_by_step(built, tmp_path, freeze_projector):
    """Plain loop (Adam, fixed seed and order): the per-step losses agree, so do the weights."""
    def run(cached: bool) -> tuple[list[float], dict]:
        model, processor = student(built["llava"], freeze_projector)
        if cached:
            mode = cache_mode(model)
            store = FeatureStore(tmp_path, fingerprint(model, processor, mode), mode)
            fill(model, processor, EXAMPLES, store)
            ds = CachedFeatureDataset(processor, EXAMPLES, MAX_LEN, store)
            install(model, store)
        else:
            ds = TrainingDataset(processor, EXAMPLES, MAX_LEN)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        model.train()
        losses = []
        for _epoch in range(3):  # 3 epochs x 3 batches
            for idx in ([0, 1], [2, 3], [4, 5]):
                loss = model(**batch_of(ds, idx)).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
        return losses, {n: p.detach().clone() for n, p in model.named_parameters()}

    live_losses, live_w = run(False)
    cached_losses, cached_w = run(True)
    assert len(live_losses) == 9 and live_losses[-1] < live_losses[0]  # it learns
    for a, b in zip(live_losses, cached_losses, strict=True):
        assert abs(a - b) < 1e-5, (live_losses, cached_losses)
    for name, w in live_w.items():
        torch.testing.assert_close(cached_w[name], w, atol=1e-5, rtol=1e-4, msg=name)


def test_distill_train_with_the_cache_matches_the_live_run(built, tmp_path):
    """Through svrd.distill.train (Trainer): same train/val loss and weights; the hook is removed after."""
    from svrd.distill import train

    cfg = load_params().with_overrides({"train.epochs": 2, "train.batch_size": 2, "train.warmup_steps": 0,
                                        "train.save_steps": 0, "train.lr": 1e-3, "train.group_by_length": False,
                                        "train.cache_vision_features": True}).train
    results = {}
    for cached in (False, True):
        model, processor = student(built["llava"], freeze_projector=False)
        stats = train(model, processor, EXAMPLES[:4], EXAMPLES[4:], cfg, str(tmp_path / f"ckpt{cached}"),
                      vision_cache=tmp_path / "features" if cached else None)
        results[cached] = (stats, {n: p.detach().clone() for n, p in model.named_parameters()}, model)
    (live, live_w, _), (cached, cached_w, model) = results[False], results[True]
    assert cached["vision_cache"]["images"] == 6 and cached["vision_cache"]["mode"] == "vision"
    assert abs(live["train_loss"] - cached["train_loss"]) <= 1e-4, (live, cached)  # both rounded to 4 places
    assert abs(live["val_loss"] - cached["val_loss"]) <= 1e-4
    for name, w in live_w.items():
        torch.testing.assert_close(cached_w[name], w, atol=1e-5, rtol=1e-4, msg=name)
    assert not model._forward_pre_hooks  # the saved student takes pixel_values again


def test_refused_unless_the_vision_encoder_is_frozen(built):
    model = load_model(str(built["llava"]))
    freeze(model, vision=False)
    with pytest.raises(SvrdError, match="frozen vision encoder"):
        cache_mode(model)
    freeze(model, vision=True)
    assert cache_mode(model) == "vision"  # the projector trains: cache before it
    freeze(model, vision=True, projector_too=True)
    assert cache_mode(model) == "projected"


def test_stage_refuses_cache_without_freeze_vision():
    params = load_params()
    on = params.with_overrides({"train.cache_vision_features": True, "student.freeze_vision": False})
    with pytest.raises(SvrdError, match="needs student.freeze_vision: true"):
        check_params(on.student, on.train)
    ok = params.with_overrides({"train.cache_vision_features": True})
    check_params(ok.student, ok.train)  # frozen (the default): allowed
    off = params.with_overrides({"student.freeze_vision": False})
    check_params(off.student, off.train)  # cache off: nothing to refuse


def test_params_default_off():
    assert load_params().train.cache_vision_features is False


def test_cache_is_reused_and_keyed_by_what_the_features_depend_on(built, tmp_path):
    model, processor = student(built["llava"], freeze_projector=True)
    fp = fingerprint(model, processor, "projected")
    first = prepare(model, processor, EXAMPLES, [], MAX_LEN, tmp_path)
    first[2].remove()
    again = prepare(model, processor, EXAMPLES, [], MAX_LEN, tmp_path)
    again[2].remove()
    assert (first[3]["computed"], again[3]["computed"], again[3]["reused"]) == (6, 0, 6)
    assert len(list((tmp_path / fp).glob("*.safetensors"))) == 6

    # the text model's weights do not matter; the projector's only after the projector
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    assert fingerprint(model, processor, "projected") == fp
    vision_fp = fingerprint(model, processor, "vision")
    with torch.no_grad():
        next(projector(model).parameters()).add_(1.0)
    assert fingerprint(model, processor, "projected") != fp
    assert fingerprint(model, processor, "vision") == vision_fp
    with torch.no_grad():
        next(vision_encoder(model).parameters()).add_(1.0)
    assert fingerprint(model, processor, "vision") != vision_fp
    processor.image_processor.image_mean = [0.0, 0.0, 0.0]
    model2, processor2 = student(built["llava"], freeze_projector=True)
    processor2.image_processor.image_mean = [0.0, 0.0, 0.0]
    assert fingerprint(model2, processor2, "projected") != fp


def test_build_llava_fixture_is_the_project_student(built):
    # the equality tests run on the project's own tiny LLaVA family
    assert build_llava is FAMILIES["llava"]
    assert type(load_model(str(built["llava"]))).__name__ == "LlavaForConditionalGeneration"
