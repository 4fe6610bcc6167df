"""svrd.distill: Table 3 as run (optimizer, decay, schedule, precision, seed), checkpoints and resume."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import build_llava, corpus, fake_records

from svrd.distill import OPTIMIZERS, latest_checkpoint, run_fingerprint, training_arguments
from svrd.examples import Example
from svrd.models import pick_dtype
from svrd.params import load_params

TESTS = Path(__file__).resolve().parent
PARAMS = load_params()


def value(enum_or_str) -> str:
    return getattr(enum_or_str, "value", enum_or_str)


def cfg(**overrides):
    return PARAMS.with_overrides(overrides).train


# --- Table 3 --------------------------------------------------------------------------------------


def test_adam_is_adamw_with_zero_decay_whatever_weight_decay_says(tmp_path):
    args = training_arguments(cfg(**{"train.optimizer": "adam", "train.weight_decay": 0.1}), str(tmp_path),
                              False, False, False)
    assert OPTIMIZERS["adam"] == "adamw_torch" == value(args.optim) and args.weight_decay == 0.0
    adamw = training_arguments(cfg(**{"train.optimizer": "adamw", "train.weight_decay": 0.1}), str(tmp_path),
                               False, False, False)
    assert adamw.weight_decay == 0.1


def test_table3_values_reach_the_trainer(tmp_path):
    c = cfg(**{"train.lr": 1.4e-5, "train.epochs": 1, "train.batch_size": 16, "train.grad_accum": 1,
               "train.warmup_steps": 7, "train.schedule": "cosine", "train.seed": 3, "train.save_steps": 5})
    args = training_arguments(c, str(tmp_path), False, False, True)  # bf16=True needs a GPU to validate
    assert (args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size) == (1.4e-5, 1, 16)
    assert args.gradient_accumulation_steps == 1 and args.warmup_steps == 7
    assert value(args.lr_scheduler_type) == "cosine" and value(args.optim) == "adamw_torch"
    assert args.seed == 3 and args.data_seed == 3 and not args.bf16 and not args.fp16
    assert args.save_steps == 5 and value(args.save_strategy) == "steps"
    no_ckpt = training_arguments(cfg(**{"train.save_steps": 0}), str(tmp_path), False, False, False)
    assert value(no_ckpt.save_strategy) == "no"


def test_precision_bf16_on_a_capable_gpu_fp32_on_cpu(monkeypatch):
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pick_dtype("auto", torch.device("cuda")) == torch.float32
    assert pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert pick_dtype("fp16", torch.device("cpu")) == torch.float16


def test_fingerprint_changes_with_run_settings():
    exs = [Example("1", b"png", "Q?", "<CONCLUSION> A </CONCLUSION>")]
    base = run_fingerprint("m", {"lr": 1e-3, "student": {"image_tokens": 729}}, exs)
    assert base == run_fingerprint("m", {"lr": 1e-3, "student": {"image_tokens": 729}}, exs)
    assert base != run_fingerprint("m", {"lr": 2e-3, "student": {"image_tokens": 729}}, exs)
    assert base != run_fingerprint("m", {"lr": 1e-3, "student": {"image_tokens": 64}}, exs)
    assert base != run_fingerprint("m", {"lr": 1e-3, "student": {"image_tokens": 729}},
                                   [Example("1", b"png2", "Q?", "<CONCLUSION> A </CONCLUSION>")])


def test_latest_checkpoint_skips_one_cut_short(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (2, 10, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-12").mkdir()  # killed before trainer_state.json was written
    (tmp_path / "checkpoint-14").mkdir()
    (tmp_path / "checkpoint-14" / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")


# --- resume after SIGKILL ----------------------------------------------------------------------------

# What stages/distill.py does, on the tiny LLaVA and fake records: build examples, load, freeze, train
# with checkpoints every 2 steps over 2 epochs of 4 steps, then write the final weights. SLOW makes
# each batch take a while, so that the kill lands mid-run.
RUNNER = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from safetensors.torch import save_file
import svrd.distill as distill
from svrd.examples import build_examples
from svrd.models import freeze, load_model, load_processor
from svrd.params import load_params
from tiny_models import fake_rationales, fake_records

if os.environ.get("SLOW"):
    call = distill.Collator.__call__
    def slow(self, features):
        time.sleep(float(os.environ["SLOW"]))
        return call(self, features)
    distill.Collator.__call__ = slow
ckpt = sys.argv[1]
records = fake_records(8)
examples = build_examples(records, fake_rationales(records), "rationale", "letter")
cfg = load_params({params!r}).with_overrides({{"train.epochs": 2, "train.batch_size": 2, "train.save_steps": 2,
    "train.warmup_steps": 0, "train.lr": 1e-3, "train.eval_questions": 0, "train.group_by_length": True}}).train
model = load_model({model!r})
processor = load_processor({model!r})
freeze(model)
if os.environ.get("LORA"):  # LoRA adapters + the projector in full, saved as adapter checkpoints
    from svrd.lora import apply_lora
    model = apply_lora(model, load_params({params!r}).train.lora, train_projector=True, seed=cfg.seed)
stats = distill.train(model, processor, examples, [], cfg, ckpt)
save_file({{k: v.detach().clone() for k, v in model.state_dict().items()}}, os.path.join(ckpt, "final.safetensors"))
print("STATS " + json.dumps(stats))
"""


@pytest.fixture(scope="module")
def resume_setup(tmp_path_factory):
    """The runner script, and the final weights of an uninterrupted run per mode (computed on demand)."""
    root = tmp_path_factory.mktemp("distill_resume")
    model_dir = root / "student"
    build_llava(model_dir, corpus(fake_records(8)))
    script = root / "run_distill.py"
    script.write_text(RUNNER.format(tests=str(TESTS), params=str(TESTS.parent / "params.yaml"), model=str(model_dir)))
    references = {}

    def uninterrupted(lora: bool) -> dict:
        if lora not in references:
            out = root / f"uninterrupted-lora{int(lora)}"
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("LORA", "1") if lora else mp.delenv("LORA", raising=False)
                stats = run_in_process(script, out)
            assert stats["steps"] == 8 and stats["resumed_from"] is None
            references[lora] = load_file(out / "final.safetensors")
        return references[lora]

    return script, uninterrupted


def run_in_process(script: Path, ckpt: Path) -> dict:
    """Run the runner here (the import of transformers' Trainer is already paid for); its stats."""
    out = io.StringIO()
    threads = torch.get_num_threads()
    argv = sys.argv
    try:
        sys.argv = [str(script), str(ckpt)]
        with contextlib.redirect_stdout(out):
            exec(compile(script.read_text(), str(script), "exec"), {"__name__": "rerun"})
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
    return json.loads(out.getvalue().split("STATS ", 1)[1].splitlines()[0])


# Killed in epoch 1 after its first checkpoint, and in epoch 2 (whose order must not replay epoch 1's);
# with LoRA, whose checkpoints hold only the adapters and the projector (and whose init is seeded).
@pytest.mark.parametrize(("kill_at", "lora"), [(2, False), (6, False), (6, True)])
def test_killed_distill_resumes_to_the_same_weights(resume_setup, tmp_path, kill_at, lora, monkeypatch):
    script, reference = resume_setup
    uninterrupted = reference(lora)
    if lora:
        monkeypatch.setenv("LORA", "1")
    else:
        monkeypatch.delenv("LORA", raising=False)
    ckpt = tmp_path / "ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "SLOW": "0.4"}
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while (latest := latest_checkpoint(ckpt)) is None or int(latest.rsplit("-", 1)[1]) < kill_at:
            assert proc.poll() is None, f"distill ended before checkpoint {kill_at}:\n{proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, f"no checkpoint {kill_at} within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    first = latest_checkpoint(ckpt)
    state = json.loads((Path(first) / "trainer_state.json").read_text())
    assert kill_at <= state["global_step"] < 8, "the kill came after training finished"
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    assert (Path(first) / weights).is_file()  # weights as safetensors, never pickles
    assert not list(Path(first).glob("pytorch_model*.bin"))
    assert not (ckpt / "final.safetensors").exists()

    stats = run_in_process(script, ckpt)
    assert stats["resumed_from"] == first
    assert stats["steps"] == 8  # the same total as the uninterrupted run
    resumed = load_file(ckpt / "final.safetensors")
    # Bit for bit: a resume that restarted from the initial weights (transformers#43701) or replayed
    # the wrong epoch's order ended up to 5e-3 away.
    assert resumed.keys() == uninterrupted.keys()
    differ = [k for k in resumed if not torch.equal(resumed[k], uninterrupted[k])]
    assert not differ, f"{len(differ)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"


@pytest.mark.parametrize(("save_steps", "folders"), [(0, []), (2, ["checkpoint-2"])])
def test_save_steps_zero_means_no_checkpoints(tmp_path, save_steps, folders):
    """Two real training steps on the tiny LLaVA: with train.save_steps 0 no checkpoint folder is
    written (2 shows that the check sees one when it is)."""
    from tiny_models import fake_rationales

    import svrd.distill as distill
    from svrd.examples import build_examples
    from svrd.models import freeze, load_model, load_processor

    records = fake_records(4)
    build_llava(tmp_path / "student", corpus(records))
    model, processor = load_model(str(tmp_path / "student")), load_processor(str(tmp_path / "student"))
    freeze(model)
    c = cfg(**{"train.epochs": 1, "train.batch_size": 2, "train.save_steps": save_steps, "train.warmup_steps": 0,
               "train.eval_questions": 0})
    examples = build_examples(records, fake_rationales(records), "rationale", "letter")
    stats = distill.train(model, processor, examples, [], c, str(tmp_path / "ckpt"))
    assert stats["steps"] == 2
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("checkpoint-*")) == folders


def test_data_workers_auto_is_none_on_cpu_and_one_per_spare_core_on_a_gpu(monkeypatch, tmp_path):
    from svrd.distill import data_workers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert data_workers("auto") == 0 and data_workers(3) == 3
    args = training_arguments(cfg(**{"train.data_workers": 2}), str(tmp_path), False, False, False)
    assert args.dataloader_num_workers == 2 and args.dataloader_persistent_workers
    assert training_arguments(cfg(), str(tmp_path), False, False, False).dataloader_num_workers == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for cpus, workers in ((16, 8), (4, 3), (1, 0), (None, 0)):
        monkeypatch.setattr(os, "cpu_count", lambda cpus=cpus: cpus)
        assert data_workers("auto") == workers, cpus


def test_workers_prepare_the_same_batches_and_every_token_is_counted(tmp_path):
    """An epoch with two data loader workers trains the same weights as without: the workers only move
    the processor's work to other processes, in the sampler's order. The tokens/s summary still counts
    every real and padding token of the epoch, counted here from the examples' own encodings (the count
    used to live in the collator, which with workers runs in their processes and counted nothing)."""
    from tiny_models import fake_rationales

    import svrd.distill as distill
    from svrd.examples import build_examples, encode_training
    from svrd.models import freeze, load_model, load_processor

    records = fake_records(6)
    build_llava(tmp_path / "student", corpus(records))
    examples = build_examples(records, fake_rationales(records), "rationale", "letter")
    runs = {}
    for workers in (0, 2):
        model, processor = load_model(str(tmp_path / "student")), load_processor(str(tmp_path / "student"))
        freeze(model)
        c = cfg(**{"train.epochs": 1, "train.batch_size": 3, "train.save_steps": 0, "train.warmup_steps": 0,
                   "train.eval_questions": 0, "train.precision": "fp32", "train.data_workers": workers})
        stats = distill.train(model, processor, examples, [], c, str(tmp_path / f"ckpt{workers}"))
        runs[workers] = stats, {k: v.clone() for k, v in model.state_dict().items()}
    (plain, plain_weights), (forked, forked_weights) = runs[0], runs[2]
    assert forked["data_workers"] == 2 and plain["data_workers"] == 0
    assert forked["train_loss"] == plain["train_loss"]
    assert all(torch.equal(plain_weights[k], forked_weights[k]) for k in plain_weights)
    real = sum(len(encode_training(processor, ex, None)["input_ids"]) for ex in examples)
    assert plain["tokens"] == forked["tokens"] == real and forked["tokens_per_s"] > 0


# --- errors a user can act on, from the stage script ------------------------------------------------


def distill_project(root: Path, overrides: dict) -> Path:
    """A distill stage working directory: params.yaml with `overrides`, the split and the rationales."""
    import yaml
    from tiny_models import fake_rationales

    from svrd.io import write_table

    raw = yaml.safe_load((TESTS.parent / "params.yaml").read_text())
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    records = fake_records(4)
    write_table(root / "data/split/train.parquet", records[:3])
    write_table(root / "data/split/val.parquet", [{**records[3], "split": "val"}])
    write_table(root / "data/teach/rationales.parquet",
                [{**r, "split": "train"} for r in fake_rationales(records[:3]).values()])
    return root


def run_distill_stage(project: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "SVRD_CACHE_DIR": str(project / "cache")}
    return subprocess.run([sys.executable, str(TESTS.parent / "stages" / "distill.py")], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


# Each case is a stage process (transformers' import alone is a few seconds).
# (train.precision=fp16 on CPU is no longer refused: it trains in fp16 autocast, tests/test_precision.py.)
@pytest.mark.parametrize(("overrides", "expected"), [
    ({"student.model": "/no/such/folder"},
     r"distill: error: student\.model=/no/such/folder is not a local folder \(no such directory\) nor a Hugging "
     r"Face Hub id: point student\.model at a folder saved with save_pretrained"),
    ({"student.model": "HuggingFaceTB/SmolVLM-256M-Instruct"},  # HF_HUB_OFFLINE: no network is tried
     r"distill: error: student\.model=HuggingFaceTB/SmolVLM-256M-Instruct is not a local folder, and the Hub could "
     r"not give it \(.+\): fetch it once with `hf download HuggingFaceTB/SmolVLM-256M-Instruct --local-dir DIR` "
     r"and set student\.model=DIR"),
], ids=["no-such-folder", "hub-id-offline"])
def test_stage_stops_in_one_line(tmp_path, overrides, expected):
    """A model that cannot load (a missing folder; a Hub id without network) ends the stage with one line
    saying what to do, no traceback, before any training."""
    import re

    proc = run_distill_stage(distill_project(tmp_path / "project", overrides))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and re.fullmatch(expected, errors[0]), proc.stderr[-3000:]
    assert not (tmp_path / "project" / "cache" / "distill").exists()  # stopped before training
