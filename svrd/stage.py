"""What every stage script shares: a clean error exit, and the pipeline's artifact paths.

Paths mirror dvc.yaml (one place in Python, one in the pipeline file).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from svrd.errors import SvrdError

SAMPLE_DIR = Path("data/sample")
FILTERED = Path("data/filtered/problems.parquet")
REJECTS = Path("data/filtered/rejects.jsonl")
SPLIT_DIR = Path("data/split")
TINY_STUDENT = Path("data/tiny_student")
RATIONALES = Path("data/teach/rationales.parquet")
FEATURES = Path("data/features")  # cached frozen vision features (svrd.features)
DISTILLED = Path("data/distill/model")
INFER_DIR = Path("data/infer")
METRICS = Path("metrics")
LIVE_DISTILL = Path("dvclive/distill")
LIVE_TINY = Path("dvclive/tiny_student")  # the base student's caption pre-training


def cache_dir() -> Path:
    """Persistent work caches (teacher answers, checkpoints, partial predictions): outside DVC outputs,
    so `dvc repro` never deletes finished work before a stage re-runs."""
    return Path(os.environ.get("SVRD_CACHE_DIR", ".svrd_cache"))


def is_main_process() -> bool:
    """Rank 0 under `accelerate launch` / torchrun (which set RANK), or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def end_process_group() -> None:
    """Tear down the process group a data-parallel run (torchrun / accelerate launch) made, before
    the interpreter exits: left to the exit-time destructors, gloo aborted a rank now and then."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(); a user-facing error prints one clear line and exits 1."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    name = Path(sys.argv[0]).stem
    t0 = time.perf_counter()
    try:
        main()
    except SvrdError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        end_process_group()
    logging.getLogger("svrd").info("%s took %.1f s", name, time.perf_counter() - t0)
