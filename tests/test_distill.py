"""svrd.distill: Table 3 as run (optimizer, decay, schedule, precision, seed), checkpoints and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
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
# with checkpoints. SLOW makes each batch take a while, so that the kill lands mid-run.
RUNNER = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
import svrd.distill as distill
from svrd.examples import build_examples
from svrd.models import freeze, load_model, load_processor
from svrd.params import load_params
from tiny_models import fake_rationales, fake_records

if os.environ.get("SLOW"):
    call = distill.CountingCollator.__call__
    def slow(self, features):
        time.sleep(float(os.environ["SLOW"]))
        return call(self, features)
    distill.CountingCollator.__call__ = slow
records = fake_records(8)
examples = build_examples(records, fake_rationales(records), "rationale", "letter")
cfg = load_params({params!r}).with_overrides({{"train.epochs": 1, "train.batch_size": 1, "train.save_steps": 2,
    "train.warmup_steps": 0, "train.lr": 1e-3, "train.eval_questions": 0}}).train
model = load_model({model!r})
processor = load_processor({model!r})
freeze(model)
stats = distill.train(model, processor, examples, [], cfg, {ckpt!r})
print("STATS " + json.dumps(stats))
"""


def test_killed_distill_resumes_from_its_last_checkpoint(tmp_path, capsys):
    model_dir = tmp_path / "student"
    build_llava(model_dir, corpus(fake_records(8)))
    ckpt = tmp_path / "ckpt"
    script = tmp_path / "run_distill.py"
    script.write_text(RUNNER.format(tests=str(TESTS), params=str(TESTS.parent / "params.yaml"),
                                    model=str(model_dir), ckpt=str(ckpt)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    proc = subprocess.Popen([sys.executable, str(script)], env={**env, "SLOW": "0.3"}, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(ckpt) is None:
            assert proc.poll() is None, f"distill ended before its first checkpoint:\n{proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    first = latest_checkpoint(ckpt)
    state = json.loads((Path(first) / "trainer_state.json").read_text())
    assert state["global_step"] < 8, "the kill came after training finished"
    assert (Path(first) / "model.safetensors").is_file()  # weights as safetensors, never pickles
    assert not list(Path(first).glob("pytorch_model*.bin"))

    # the re-run, in this process (the import of transformers' Trainer is already paid for)
    namespace = {"__name__": "rerun"}
    threads = torch.get_num_threads()
    try:
        exec(compile(script.read_text(), str(script), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert f"resuming from {first}" in out
    stats = json.loads(out.split("STATS ", 1)[1].splitlines()[0])
    assert stats["resumed_from"] == first
    assert stats["steps"] == 8  # 8 examples, batch 1, 1 epoch: the same total as an uninterrupted run
    assert latest_checkpoint(ckpt).endswith("checkpoint-8")


@pytest.mark.parametrize("value", [0, 3])
def test_save_steps_zero_means_no_checkpoints(value):
    assert cfg(**{"train.save_steps": value}).save_steps == value
