"""Mixed precision: train.precision / prefer.precision bf16 and fp16 compute in that dtype over fp32
weights, so the paper's learning rates (distill 1.4e-5, DPO 5e-7) move the weights.

In pure bf16 (the weights themselves in bf16, as before) AdamW's updates of about lr round to zero
for most weights: 4 steps at 1.4e-5 moved 15% of the tiny student's trainable weights. These tests
run on CPU in bf16 and fp16 autocast: torch has both there, and fp16 adds a grad scaler (accelerate
alone makes neither for fp16 on CPU and would silently train in fp32: svrd.models.CpuFp16Trainer).
The GPU choices are checked as configuration.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_prefer import STAGE_FAST, first_chain_right, make_project
from tiny_models import build_llava, corpus, fake_rationales, fake_records

import svrd.distill as distill
import svrd.models as models
import svrd.prefer as prefer
from svrd.examples import build_examples
from svrd.models import cpu_has_native_bf16, load_student, mixed_precision
from svrd.params import load_params

REPO = Path(__file__).resolve().parents[1]
PARAMS = load_params(REPO / "params.yaml")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("precision") / "student"
    build_llava(path, corpus(fake_records(8)))
    return path


def moved_share(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """Share of the elements of `before` that differ in `after`, compared in `after`'s dtype (a bf16
    weight that did not change must not count as moved for its rounding)."""
    moved = sum(int((after[k] != before[k].to(after[k].dtype)).sum()) for k in before)
    return moved / sum(t.numel() for t in before.values())


COMPUTE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class OutputDtypes:
    """Records the dtype a text-model Linear computes in (bf16 under bf16 autocast, fp16 under fp16)."""

    def __init__(self, model):
        layer = next(m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "language_model" in n)
        self.seen: set[torch.dtype] = set()
        self.handle = layer.register_forward_hook(lambda m, i, out: self.seen.add(out.dtype))


# --- distill --------------------------------------------------------------------------------------


def assert_scaled(trainer, steps: int) -> None:
    """fp16: the accelerator's grad scaler is on, scaled every backward and stepped every optimizer step
    (its growth tracker counts the steps it took without an inf/NaN since the last skip)."""
    scaler = trainer.accelerator.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled() and scaler.get_scale() > 1.0
    assert trainer.optimizer.scaler is scaler  # the optimizer steps through it
    assert scaler.state_dict()["_growth_tracker"] == steps, "every step unscaled, none skipped"


@pytest.fixture
def trainers(monkeypatch) -> list:
    """The Trainers distill.train and prefer.dpo_trainer build, as built."""
    built = []

    class Spy(distill.LengthGroupedTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(distill, "LengthGroupedTrainer", Spy)
    dpo_trainer = prefer.dpo_trainer

    def spy(*args, **kwargs):
        built.append(dpo_trainer(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(prefer, "dpo_trainer", spy)
    return built


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_distill_at_the_paper_lr_moves_the_weights(student, tmp_path, precision, trainers):
    """4 steps of Adam at 1.4e-5 move >= 99% of the trainable weights in bf16 and fp16 (on CPU too) as in
    fp32 (the student loaded as the stage loads it: load_student). Pure bf16 weights moved 15.3% here."""
    records = fake_records(8)
    examples = build_examples(records, fake_rationales(records), "rationale", "letter")
    params = PARAMS.with_overrides({"student.model": str(student), "train.precision": precision,
                                    "train.optimizer": "adam", "train.lr": 1.4e-5, "train.epochs": 1,
                                    "train.batch_size": 2, "train.grad_accum": 1, "train.warmup_steps": 0,
                                    "train.save_steps": 0, "train.eval_questions": 0})
    model, processor, _, _ = load_student(params.student, params.train.precision)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    dtypes = OutputDtypes(model)
    stats = distill.train(model, processor, examples, [], params.train, str(tmp_path / "ckpt"))
    after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert stats["steps"] == 4
    assert moved_share(before, after) >= 0.99
    assert all(t.dtype == torch.float32 for t in after.values())  # fp32 master weights
    assert dtypes.seen == {COMPUTE[precision]}, "forward and backward run in the precision asked for"
    assert stats["mixed_precision"] == ("no" if precision == "fp32" else precision) and stats["dtype"] == "float32"
    (trainer,) = trainers
    if precision == "fp16":
        assert_scaled(trainer, steps=4)
    else:
        assert trainer.accelerator.scaler is None


def test_half_precision_trainable_weights_are_refused(student, tmp_path):
    """Pure bf16 training is not offered: a student whose trainable weights are bf16 is refused."""
    from svrd.models import load_model, load_processor

    model, processor = load_model(str(student), dtype=torch.bfloat16), load_processor(str(student))
    cfg = PARAMS.with_overrides({"train.precision": "bf16", "train.eval_questions": 0}).train
    records = fake_records(2)
    with pytest.raises(ValueError, match="trainable weights are torch.bfloat16: load it in float32"):
        distill.train(model, processor, build_examples(records, fake_rationales(records)), [], cfg,
                      str(tmp_path / "ckpt"))


# --- DPO ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_dpo_at_the_paper_lr_moves_the_weights(student, tmp_path, precision, monkeypatch, trainers):
    """The prefer stage's own path (run_prefer: load, sample, pair, DPO, save) at lr 5e-7: >= 99% of the
    text weights move in bf16 and fp16 (on CPU too) as in fp32, compared in the dtype the stage saved.
    Pure bf16 weights: 0.8%."""
    records = fake_records(8)
    overrides = {**STAGE_FAST, "prefer.lr": 5e-7, "prefer.precision": precision, "prefer.max_questions": 8,
                 "prefer.train_batch_size": 2, "prefer.warmup_steps": 0}
    project = make_project(tmp_path / "project", student, records, overrides)
    monkeypatch.setattr(prefer, "judge", first_chain_right)  # every question gives a pair
    dtypes = {}
    train_dpo = prefer.train_dpo

    def spy(model, *args, **kwargs):
        dtypes["hook"] = OutputDtypes(model)
        return train_dpo(model, *args, **kwargs)

    monkeypatch.setattr(prefer, "train_dpo", spy)
    stats = prefer.run_prefer(load_params(project / "params.yaml"), records, project / "data/distill/model",
                              project / "out/model", project / "out/pairs.parquet", tmp_path / "cache",
                              progress=False)
    assert stats["trained"] and stats["dpo"]["steps"] >= 3
    distilled = load_file(project / "data/distill/model/model.safetensors")
    trained = load_file(project / "out/model/model.safetensors")
    text = [k for k in distilled if "language_model" in k]
    assert moved_share({k: distilled[k] for k in text}, trained) >= 0.99
    assert all(trained[k].dtype == torch.float32 for k in text)
    assert dtypes["hook"].seen == {COMPUTE[precision]}
    assert stats["dpo"]["mixed_precision"] == ("no" if precision == "fp32" else precision)
    (trainer,) = trainers
    if precision == "fp16":
        assert_scaled(trainer, steps=stats["dpo"]["steps"])
    else:
        assert trainer.accelerator.scaler is None


# --- fp16 on CPU, and the GPU choices without a GPU ---------------------------------------------------


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cpu_precision_choice(monkeypatch, native_bf16):
    """On CPU fp16 is fp16 autocast (with a grad scaler in training), as bf16 is bf16; auto is bf16 only
    where the CPU multiplies bf16 in hardware (emulated, a step took 1.2x to 12x fp32's time)."""
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native_bf16)
    cpu = torch.device("cpu")
    for param in ("train.precision", "prefer.precision"):
        assert mixed_precision("fp16", cpu, param) == "fp16"
    assert mixed_precision("bf16", cpu) == "bf16" and mixed_precision("fp32", cpu) is None
    assert mixed_precision("auto", cpu) == ("bf16" if native_bf16 else None)
    assert models.pick_dtype("auto", cpu) == torch.float32  # inference weights stay fp32 on CPU either way


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU's flags from Linux's /proc/cpuinfo")
def test_native_bf16_is_read_from_the_cpu():
    """cpu_has_native_bf16 agrees with the kernel's list of the CPU's instruction sets."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            flags |= set(line.split(":", 1)[1].split())
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


@pytest.mark.parametrize(("precision", "bf16_gpu", "compute"), [
    ("auto", True, "bf16"), ("auto", False, None), ("bf16", True, "bf16"), ("fp16", True, "fp16"),
    ("fp16", False, "fp16"), ("fp32", True, None),
])
def test_gpu_precision_choice(monkeypatch, precision, bf16_gpu, compute):
    """On a GPU: auto is bf16 autocast where the GPU has bf16 (A100/H100), else fp32; fp16 is allowed."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    assert mixed_precision(precision, torch.device("cuda", 0)) == compute


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_gpu_configuration_reaches_the_trainer(student, tmp_path, monkeypatch, precision):
    """What distill.train gives Trainer on a GPU: fp32 weights, and bf16=/fp16= from train.precision
    (Trainer's mixed precision: autocast, and for fp16 a grad scaler over fp32 gradients)."""
    class Stop(Exception):
        pass

    seen = {}

    def capture(cfg, output_dir, use_bf16, use_fp16, has_eval):
        seen.update(bf16=use_bf16, fp16=use_fp16)
        raise Stop

    params = PARAMS.with_overrides({"student.model": str(student), "train.precision": precision})
    model, processor, _, _ = load_student(params.student, params.train.precision)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # whatever the precision
    monkeypatch.setattr(distill, "mixed_precision", lambda p, device, param="train.precision": p)  # as on a GPU
    monkeypatch.setattr(distill, "training_arguments", capture)
    records = fake_records(2)
    with pytest.raises(Stop):
        distill.train(model, processor, build_examples(records, fake_rationales(records)), [], params.train,
                      str(tmp_path / "ckpt"))
    assert seen == {"bf16": precision == "bf16", "fp16": precision == "fp16"}
