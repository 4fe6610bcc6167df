"""Data parallel distill: the same stage under `torchrun`, two CPU ranks over gloo.

On GPUs the command is `accelerate launch --num_processes N stages/distill.py` (or torchrun); the
Trainer path is the same one checked here, with nccl instead of gloo. What must hold: the ranks
form one process group, each sees half the data, their weights stay identical, and the result is
the single-process run at the same effective batch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from project_copy import run
from safetensors.torch import load_file
from tiny_models import build_llava, corpus, fake_records

TESTS = Path(__file__).resolve().parent

RUNNER = """
import json, os, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
import torch.distributed as dist
from safetensors.torch import save_file
import svrd.distill as distill
from svrd.examples import build_examples
from svrd.models import freeze, load_model, load_processor
from svrd.params import load_params
from tiny_models import fake_rationales, fake_records

out, batch = sys.argv[1], int(sys.argv[2])
records = fake_records(8)
examples = build_examples(records, fake_rationales(records), "rationale", "letter")
cfg = load_params({params!r}).with_overrides({{"train.epochs": 1, "train.batch_size": batch, "train.save_steps": 0,
    "train.warmup_steps": 0, "train.lr": 1e-3, "train.eval_questions": 0, "train.group_by_length": False,
    "train.precision": "fp32"}}).train  # compared to 1e-5: fp32, whatever `auto` picks on this CPU
model = load_model({model!r})
freeze(model)
stats = distill.train(model, load_processor({model!r}), examples, [], cfg, os.path.join(out, "ckpt"))
rank = os.environ.get("RANK", "solo")
stats["group"] = dist.get_world_size() if dist.is_initialized() else 1
save_file({{k: v.detach().clone() for k, v in model.state_dict().items()}}, os.path.join(out, f"weights-{{rank}}.safetensors"))
with open(os.path.join(out, f"stats-{{rank}}.json"), "w") as fh:
    json.dump(stats, fh)
"""


def torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def env_one_thread() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_two_ranks_train_as_one_batch(tmp_path):
    model_dir = tmp_path / "student"
    build_llava(model_dir, corpus(fake_records(8)))
    script = tmp_path / "run.py"
    script.write_text(RUNNER.format(tests=str(TESTS), params=str(TESTS.parent / "params.yaml"), model=str(model_dir)))
    ddp, solo = tmp_path / "ddp", tmp_path / "solo"
    for cmd, out in ((torchrun(2) + [str(script), str(ddp), "2"], ddp), ([sys.executable, str(script), str(solo), "4"], solo)):
        out.mkdir()
        proc = subprocess.run(cmd, cwd=tmp_path, env=env_one_thread(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [json.loads((ddp / f"stats-{r}.json").read_text()) for r in (0, 1)]
    assert all(s["group"] == 2 and s["processes"] == 2 for s in ranks)  # one process group, not two solo runs
    assert all(s["steps"] == 2 and s["effective_batch"] == 4 for s in ranks)  # 8 examples / (2 ranks x 2)
    w0, w1 = load_file(ddp / "weights-0.safetensors"), load_file(ddp / "weights-1.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "ranks drifted apart: gradients were not all-reduced"

    alone = load_file(solo / "weights-solo.safetensors")
    assert json.loads((solo / "stats-solo.json").read_text())["steps"] == 2
    start = load_model_state(model_dir)
    moved = max((alone[k] - start[k]).abs().max().item() for k in alone)
    gap = max((w0[k] - alone[k]).abs().max().item() for k in alone)
    assert moved > 1e-3  # training did move the weights ...
    assert gap < 1e-5  # ... and two ranks of 2 land where one process with batch 4 does (up to sum order)


def load_model_state(path: Path) -> dict:
    from svrd.models import load_model

    return {k: v.detach() for k, v in load_model(str(path)).state_dict().items()}


@pytest.mark.e2e
@pytest.mark.xdist_group("pipeline")
def test_distill_stage_runs_unchanged_under_torchrun(pipeline_run, tmp_path):
    """The stage script itself, in a copy of the reproduced project: rank 0 alone logs and saves."""
    project = tmp_path / "project"
    shutil.copytree(pipeline_run["project"], project, symlinks=True)
    env = {**pipeline_run["env"], "SVRD_CACHE_DIR": str(tmp_path / "svrd-cache")}
    shutil.rmtree(project / "data/distill")
    proc = run(torchrun(2) + ["stages/distill.py"], project, env, timeout=600)
    assert proc.stdout.count("distill:") >= 1 and "(effective batch" in proc.stdout
    stats = json.loads((project / "metrics/distill.json").read_text())
    assert stats["processes"] == 2
    train = yaml.safe_load((project / "params.yaml").read_text())["train"]
    assert stats["effective_batch"] == 2 * train["batch_size"] * train["grad_accum"]
    # each rank takes its half of every batch: half the steps of one process at the per-rank batch
    assert stats["steps"] == math.ceil(stats["examples"] / stats["effective_batch"]) * train["epochs"]
    assert (project / "data/distill/model/model.safetensors").is_file()
    from svrd.models import load_model

    load_model(str(project / "data/distill/model"))  # what infer loads next
