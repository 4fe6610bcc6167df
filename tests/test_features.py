"""Cached frozen vision features (svrd.features, stage features): same loss as the live path through
the DVC-tracked folder, exact-only guards, mismatch refusals, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny_models import FAMILIES, TEXT_WIDTH, build_llava, corpus, fake_rationales, fake_records

from svrd.errors import SvrdError
from svrd.examples import Collator, TrainingDataset, build_examples, tokenizer_of
from svrd.features import (
    MANIFEST,
    CachedFeatureDataset,
    FeatureStore,
    cache_mode,
    check_params,
    fill,
    fingerprint,
    image_sha,
    install,
    prepare,
    write_disabled,
    write_features,
)
from svrd.io import write_table
from svrd.models import freeze, load_model, load_processor, projector, vision_encoder
from svrd.params import load_params

REPO = Path(__file__).resolve().parents[1]

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


def split_tables(root: Path, train: list[dict], val: list[dict]) -> dict[str, Path]:
    tables = {"train": root / "data/split/train.parquet", "val": root / "data/split/val.parquet"}
    write_table(tables["train"], train)
    write_table(tables["val"], val)
    return tables


def features_of(model, processor, tmp_path, examples=EXAMPLES, name="features") -> Path:
    """What the features stage writes for `examples` (all in the train table)."""
    rows = [r for r in RECORDS if r["pid"] in {ex.pid for ex in examples}]
    tables = split_tables(tmp_path / f"{name}_tables", rows, [])
    write_features(model, processor, tables, tmp_path / name, tmp_path / "work", "tiny")
    return tmp_path / name


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
    fill(model, processor, (ex.image for ex in EXAMPLES), store)
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
            fill(model, processor, (ex.image for ex in EXAMPLES), store)
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
    """Through the features stage's folder and svrd.distill.train (Trainer): same train/val loss and
    weights as the live run; the hook is removed after."""
    from svrd.distill import train

    cfg = load_params().with_overrides({"train.epochs": 2, "train.batch_size": 2, "train.warmup_steps": 0,
                                        "train.save_steps": 0, "train.lr": 1e-3, "train.group_by_length": False,
                                        "train.cache_vision_features": True,
                                        "train.precision": "fp32"}).train  # exact in fp32 (bf16: autocast rounding)
    model, processor = student(built["llava"], freeze_projector=False)
    features = features_of(model, processor, tmp_path)
    results = {}
    for cached in (False, True):
        model, processor = student(built["llava"], freeze_projector=False)
        stats = train(model, processor, EXAMPLES[:4], EXAMPLES[4:], cfg, str(tmp_path / f"ckpt{cached}"),
                      vision_cache=features if cached else None)
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
    tables = split_tables(tmp_path, RECORDS, [])
    first = write_features(model, processor, tables, tmp_path / "out1", tmp_path / "work", "tiny")
    again = write_features(model, processor, tables, tmp_path / "out2", tmp_path / "work", "tiny")
    assert (first["computed"], again["computed"], again["reused"]) == (6, 0, 6)
    assert len(list((tmp_path / "work" / fp).glob("*.safetensors"))) == 6
    # an unchanged re-run writes the same folder (DVC sees the same output: distill does not re-run)
    assert sorted(os.listdir(tmp_path / "out1" / fp)) == sorted(os.listdir(tmp_path / "out2" / fp))
    assert (tmp_path / "out1" / MANIFEST).read_bytes() == (tmp_path / "out2" / MANIFEST).read_bytes()

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


def test_lora_keeps_the_fingerprint(built):
    """distill applies LoRA after loading: the features stage's fingerprint must still match."""
    from svrd.lora import apply_lora

    lora = load_params().with_overrides({"train.lora.enabled": True}).train.lora
    for freeze_projector in (True, False):
        model, processor = student(built["llava"], freeze_projector)
        mode = cache_mode(model)
        before = fingerprint(model, processor, mode)
        model = apply_lora(model, lora, train_projector=not freeze_projector)
        freeze(model, vision=True, projector_too=freeze_projector)
        assert cache_mode(model) == mode and fingerprint(model, processor, mode) == before


def test_a_killed_stage_resumes_from_the_work_cache(built, tmp_path, monkeypatch):
    model, processor = student(built["llava"], freeze_projector=True)
    tables = split_tables(tmp_path, RECORDS[:4], RECORDS[4:])
    out = tmp_path / "data/features"
    saved = []
    real_save = FeatureStore.save

    def dying_save(self, sha, features):
        if len(saved) == 3:
            raise KeyboardInterrupt  # killed after three images
        real_save(self, sha, features)
        saved.append(sha)

    monkeypatch.setattr(FeatureStore, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        write_features(model, processor, tables, out, tmp_path / "work", "tiny")
    assert [p.name for p in out.parent.iterdir()] == ["split"]  # no output, no half-assembled folder
    monkeypatch.setattr(FeatureStore, "save", real_save)
    done = write_features(model, processor, tables, out, tmp_path / "work", "tiny")
    assert (done["computed"], done["reused"], done["images"]) == (3, 3, 6)
    assert len(list((out / done["fingerprint"]).glob("*.safetensors"))) == 6


def test_a_mismatched_folder_is_refused_naming_the_mismatch(built, tmp_path):
    model, processor = student(built["llava"], freeze_projector=True)
    features = features_of(model, processor, tmp_path)
    prepare(model, processor, EXAMPLES, [], MAX_LEN, features)[2].remove()  # the student it was written for

    trains_projector, processor2 = student(built["llava"], freeze_projector=False)
    with pytest.raises(SvrdError, match=r"features taken after the projector .* student.freeze_projector"):
        prepare(trains_projector, processor2, EXAMPLES, [], MAX_LEN, features)

    other, processor3 = student(built["llava"], freeze_projector=True)
    with torch.no_grad():
        next(vision_encoder(other).parameters()).add_(1.0)
    with pytest.raises(SvrdError, match=r"another student .* vision_encoder differs: .*vision encoder's weights"):
        prepare(other, processor3, EXAMPLES, [], MAX_LEN, features)

    half, processor4 = student(built["llava"], freeze_projector=True)
    half.to(torch.float16)
    with pytest.raises(SvrdError, match=r"dtype differs: float32 vs float16 .*train.precision"):
        prepare(half, processor4, EXAMPLES, [], MAX_LEN, features)

    unfrozen, processor5 = student(built["llava"], freeze_projector=True)
    for p in vision_encoder(unfrozen).parameters():
        p.requires_grad_(True)
    with pytest.raises(SvrdError, match="frozen vision encoder"):
        prepare(unfrozen, processor5, EXAMPLES, [], MAX_LEN, features)

    few = features_of(model, processor, tmp_path, EXAMPLES[:3], name="few")
    with pytest.raises(SvrdError, match="3 of 6 train/val images have no features"):
        prepare(model, processor, EXAMPLES, [], MAX_LEN, few)

    write_disabled(tmp_path / "off")
    with pytest.raises(SvrdError, match="written with it false"):
        prepare(model, processor, EXAMPLES, [], MAX_LEN, tmp_path / "off")
    with pytest.raises(SvrdError, match="has no manifest.json"):
        prepare(model, processor, EXAMPLES, [], MAX_LEN, tmp_path / "nowhere")


def test_a_stale_entry_is_refused(built, tmp_path):
    """A stored entry that no longer reproduces the live features (tampered, or another machine's numerics)."""
    model, processor = student(built["llava"], freeze_projector=True)
    features = features_of(model, processor, tmp_path)
    from safetensors.torch import save_file

    fp = fingerprint(model, processor, "projected")
    for path in (features / fp).glob("*.safetensors"):
        path.unlink()  # a hard link into the work cache: replace, never write through
        save_file({"features": torch.zeros(1, 64, 64)}, str(path))
    with pytest.raises(SvrdError, match="do not reproduce its live image features"):
        prepare(model, processor, EXAMPLES, [], MAX_LEN, features)


# --- the stage as a subprocess -----------------------------------------------------------------


def run_stage(project: Path, **overrides) -> subprocess.CompletedProcess:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
           "SVRD_CACHE_DIR": str(project / "cache")}
    return subprocess.run([sys.executable, str(REPO / "stages" / "features.py")], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


def test_stage_writes_features_for_every_train_and_val_image(built, tmp_path):
    no_image = {**RECORDS[0], "pid": "2000", "image": None}
    same_image = {**RECORDS[1], "pid": "2001"}  # one entry per distinct image
    train, val = [*RECORDS[:4], no_image, same_image], RECORDS[4:]
    split_tables(tmp_path, train, val)
    proc = run_stage(tmp_path, **{"student.model": built["llava"], "train.cache_vision_features": True,
                                  "student.freeze_projector": True})
    assert proc.returncode == 0, proc.stderr
    assert "features: 6 images of 8 train/val rows (6 computed, 0 from the work cache" in proc.stdout
    manifest = json.loads((tmp_path / "data/features" / MANIFEST).read_text())
    fp = manifest["fingerprint"]
    assert {k: manifest[k] for k in ("enabled", "student", "mode", "taken", "dtype", "rows", "images")} == {
        "enabled": True, "student": built["llava"], "mode": "projected", "taken": "after the projector",
        "dtype": "float32", "rows": {"train": 6, "val": 2}, "images": 6}
    assert manifest["entry_shape"] == [1, 64, TEXT_WIDTH] and manifest["image_tokens"] == 64
    assert {p.name for p in (tmp_path / "data/features" / fp).iterdir()} == {
        f"{image_sha(r['image'])}.safetensors" for r in RECORDS}
    assert {p.name for p in (tmp_path / "data/features").iterdir()} == {MANIFEST, fp}

    model, processor = student(built["llava"], freeze_projector=True)
    assert fingerprint(model, processor, "projected") == fp  # the student distill loads (svrd.models.load_student)


def test_stage_disabled_writes_only_the_disabled_manifest(tmp_path):
    split_tables(tmp_path, RECORDS[:4], RECORDS[4:])
    # no student there at all: disabled, the stage loads nothing
    proc = run_stage(tmp_path, **{"student.model": str(tmp_path / "missing"), "train.cache_vision_features": False})
    assert proc.returncode == 0, proc.stderr
    assert "features: disabled" in proc.stdout
    assert os.listdir(tmp_path / "data/features") == [MANIFEST]
    assert json.loads((tmp_path / "data/features" / MANIFEST).read_text())["enabled"] is False


def test_stage_refuses_cache_with_a_trained_vision_encoder(tmp_path):
    split_tables(tmp_path, RECORDS[:4], RECORDS[4:])
    proc = run_stage(tmp_path, **{"train.cache_vision_features": True, "student.freeze_vision": False})
    assert proc.returncode == 1 and "needs student.freeze_vision: true" in proc.stderr
    assert not (tmp_path / "data/features").exists()


def test_build_llava_fixture_is_the_project_student(built):
    # the equality tests run on the project's own tiny LLaVA family
    assert build_llava is FAMILIES["llava"]
    assert type(load_model(str(built["llava"]))).__name__ == "LlavaForConditionalGeneration"
