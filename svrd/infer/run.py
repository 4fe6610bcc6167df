"""The infer stage's run: load the model of one `infer.models` entry, predict the test split
(svrd.infer.predict, or vLLM: svrd.infer.vllm_engine), resume from a partial log
(svrd.infer.resume), and gather the timings and each mode's figures for metrics/infer/NAME.json.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from svrd.baselines import kosmos2
from svrd.infer import vilt
from svrd.infer.encoding import examples_from_rows
from svrd.infer.predict import MODES, predict
from svrd.infer.resume import load_partial, partial_log, run_fingerprint

log = logging.getLogger(__name__)


def resolve_model_path(params, name: str) -> str:
    """An infer.models entry's path: a folder or Hub id, or the name of a param holding one."""
    entry = params.infer.models[name]
    path = entry.path
    if path in ("student.model", "teach.model"):
        section, key = path.split(".")
        path = getattr(getattr(params, section), key)
        if not path:
            from svrd.errors import SvrdError

            raise SvrdError(f"infer.models.{name}.path refers to {entry.path}, which is not set")
    return path


def run_inference(params, name: str, test_rows: list[dict]) -> tuple[list[dict], dict]:
    """Load the model of infer.models[name], predict the test rows, resume from a partial run."""

    from svrd.models import (
        apply_image_tokens,
        count_image_tokens,
        load_model,
        load_processor,
        pick_device,
        pick_dtype,
    )
    from svrd.stage import cache_dir

    path = resolve_model_path(params, name)
    opts = params.infer
    trust = params.infer.models[name].trust_remote_code  # None: the student's setting
    trust = params.student.trust_remote_code if trust is None else trust
    device = pick_device()
    partial = cache_dir() / "infer" / f"{name}-{run_fingerprint(path, params, [r['pid'] for r in test_rows])}.jsonl"
    done = load_partial(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    if vilt.is_vilt(path, trust):
        vilt.check_settings(name, opts.mode, opts.engine)
        return _run_vilt(path, name, test_rows, opts, trust, partial, done)
    if opts.engine == "vllm":
        if params.infer.models[name].path == "student.model":
            log.warning("infer.engine=vllm runs %s with the processor as saved: student.image_tokens is applied to "
                        "the untrained student only by the transformers engine", path)
        return _run_vllm(path, name, test_rows, opts, trust, partial, done)
    model = load_model(path, trust, pick_dtype("auto", device)).to(device)
    processor = load_processor(path, trust)
    model, processor = kosmos2.adapt(model, processor, opts.mode)  # KOSMOS-2's prompt (others: unchanged)
    image_tokens = None
    if params.infer.models[name].path == "student.model":
        # The untrained student sees images at the resolution distill trains at (a trained student's
        # saved processor already carries it), so base and distilled differ only in training.
        image_tokens = apply_image_tokens(model, processor, params.student.image_tokens)["image_tokens"]

    rows, wall = logged_run(partial, lambda persist: predict(
        model, processor, examples_from_rows(test_rows), {r["pid"]: r["choices"] for r in test_rows}, name,
        opts.batch_size, opts.max_new_tokens, done=done, on_batch=persist, mode=opts.mode,
        likelihood_answer=opts.likelihood_answer, samples=opts.samples, temperature=opts.temperature, seed=opts.seed,
        beam=opts.beam))
    stats = _timing_stats(rows, pop_seconds(rows), path, sum(p.numel() for p in model.parameters()), len(done),
                          wall, opts)
    stats["image_tokens"] = image_tokens if image_tokens is not None else count_image_tokens(processor)
    stats.update(MODES[opts.mode].run_stats(rows, opts))
    return rows, stats


def logged_run(partial, answer) -> tuple[list[dict], float]:
    """`answer(persist)` with each finished batch appended to the partial log `partial` (a killed run
    resumes from it), which is removed once every row is in; returns the rows and the wall seconds."""
    with partial_log(partial) as persist:
        t0 = time.perf_counter()
        rows = answer(persist)
        wall = time.perf_counter() - t0
    partial.unlink()
    return rows, wall


def pop_seconds(rows: list[dict]) -> list[float]:
    """Take each row's share of its batch's wall time out of the row: timings belong in metrics/,
    never in predictions.parquet, a data artifact that must reproduce byte for byte."""
    return [row.pop("seconds") for row in rows]


def seconds_distribution(seconds: list[float]) -> dict:
    """Total, mean, median and 90th percentile of the per-question seconds."""
    values = np.asarray(seconds, dtype=float)
    if not values.size:
        return {"total": 0.0, "mean": 0.0, "p50": 0.0, "p90": 0.0}
    return {"total": round(float(values.sum()), 3), "mean": round(float(values.mean()), 4),
            "p50": round(float(np.percentile(values, 50)), 4), "p90": round(float(np.percentile(values, 90)), 4)}


def _timing_stats(rows: list[dict], seconds: list[float], path: str, parameters: int, resumed: int, wall: float,
                  opts) -> dict:
    new_tokens = sum(r["new_tokens"] for r in rows)
    gen_seconds = sum(seconds)
    return {
        "model": path,
        "parameters": parameters,
        "questions": len(rows),
        "resumed": resumed,
        "wall_s": round(wall, 2),
        "generate_s": round(gen_seconds, 2),
        "questions_per_s": round(len(rows) / gen_seconds, 2) if gen_seconds else 0.0,
        "tokens_per_s": round(new_tokens / gen_seconds, 1) if gen_seconds else 0.0,
        "seconds_per_question": seconds_distribution(seconds),  # each question's share of its batch's time
        "unparseable": sum(r["choice"] is None for r in rows),
        "batch_size": opts.batch_size,
        "mode": opts.mode,
        "engine": opts.engine,
    }


def _run_vllm(path: str, name: str, test_rows: list[dict], opts, trust: bool, partial, done: dict):
    """infer.engine=vllm: the same rows from vLLM's scheduler (GPU only, greedy)."""

    from svrd.infer.vllm_engine import predict_vllm  # vllm itself is imported only when this runs

    rows, wall = logged_run(partial, lambda persist: predict_vllm(
        path, examples_from_rows(test_rows), {r["pid"]: r["choices"] for r in test_rows}, name, opts.max_new_tokens,
        trust, done=done, on_batch=persist))
    # vLLM holds the weights in its own process: count them from the safetensors headers instead.
    return rows, _timing_stats(rows, pop_seconds(rows), path, parameters_on_disk(path), len(done), wall, opts)


def _run_vilt(path: str, name: str, test_rows: list[dict], opts, trust: bool, partial, done: dict):
    """A ViLT entry: option choice through its answer vocabulary (svrd.infer.vilt), no generation."""
    from svrd.models import pick_device, pick_dtype

    device = pick_device()
    model, processor = vilt.load(path, trust, pick_dtype("auto", device), device)
    rows, wall = logged_run(partial, lambda persist: vilt.predict_vilt(
        model, processor, test_rows, name, opts.batch_size, done=done, on_batch=persist))
    stats = _timing_stats(rows, pop_seconds(rows), path, sum(p.numel() for p in model.parameters()), len(done),
                          wall, opts)
    stats["unmapped"] = stats["unparseable"]  # no option mapped onto its answer vocabulary, or a tie
    return rows, stats


def parameters_on_disk(path: str) -> int:
    """Parameter count of a local model folder from its safetensors headers (0 when not local)."""
    from pathlib import Path

    from safetensors import safe_open

    total = 0
    for file in sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []:
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():
                shape = fh.get_slice(key).get_shape()
                n = 1
                for dim in shape:
                    n *= dim
                total += n
    return total

