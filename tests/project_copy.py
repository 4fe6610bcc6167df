"""Helpers for end-to-end tests: a fresh copy of the project, run under DVC."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Small enough for a few CPU minutes, big enough that every stage does real work.
FAST_PARAMS = {
    "data.sample.per_family": 12,
    "tiny.pretrain.epochs": 1,
    "train.epochs": 1,
    "train.warmup_steps": 2,
    "train.eval_questions": 4,
    "train.eval_max_new_tokens": 16,
    "train.save_steps": 0,
    "infer.max_new_tokens": 24,
    "infer.batch_size": 16,
    "prefer.max_questions": 6,
    "prefer.samples": 2,
    "prefer.max_new_tokens": 24,
}


def set_params(path: Path, overrides: dict) -> None:
    params = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.split("\n")
    return [f for f in out if f and (REPO / f).is_file()]


def copy_project(dest: Path, overrides: dict | None = None) -> Path:
    """A fresh copy of the project (what git would check out) as its own git repo, params made fast."""
    for rel in tracked_files():
        if rel.startswith(("tests/", "benchmarks/", "metrics/", "dvclive/")) or rel == "dvc.lock":
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    set_params(dest / "params.yaml", {**FAST_PARAMS, **(overrides or {})})
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=dest, check=True)
    return dest


def run_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env["SVRD_CACHE_DIR"] = str(tmp / "svrd-cache")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["DVC_NO_ANALYTICS"] = "1"
    env["TQDM_MININTERVAL"] = "5"
    # pytest -n 2 shares two cores: one thread per process avoids oversubscription, which
    # slows a tiny model's matmuls by an order of magnitude.
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


