"""infer: batched greedy decoding over the test split, one predictions row per pid.

The published code decoded one question at a time and re-decoded every image on each access;
here prompts are length-sorted into batches, left-padded, and generated together.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pyarrow as pa
import torch
from tqdm import tqdm

from svrd.answers import extract_choice
from svrd.examples import Example, encode_prompt, messages_for, tokenizer_of
from svrd.images import open_png

PREDICTION_SCHEMA = pa.schema(
    [
        ("pid", pa.string()),
        ("model", pa.string()),
        ("raw", pa.string()),
        ("choice", pa.int64()),  # null when the output commits to no option
        ("new_tokens", pa.int64()),
        ("seconds", pa.float64()),  # this question's share of its batch's wall time
    ]
)


def encode_batch(processor, examples: list[Example]) -> dict:
    """Left-padded prompts for generation (the new tokens then line up at the right)."""
    tok = tokenizer_of(processor)
    tok.padding_side = "left"
    texts = [
        processor.apply_chat_template(messages_for(ex.prompt, ex.image is not None), add_generation_prompt=True,
                                      tokenize=False)
        for ex in examples
    ]
    images = [open_png(ex.image) for ex in examples if ex.image is not None]
    if images:
        return processor(images=images, text=texts, return_tensors="pt", padding=True)
    return processor(text=texts, return_tensors="pt", padding=True)


@torch.inference_mode()
def generate_batch(model, processor, examples: list[Example], max_new_tokens: int) -> tuple[list[str], list[int]]:
    tok = tokenizer_of(processor)
    inputs = encode_batch(processor, examples).to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    out = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )
    new = out[:, inputs["input_ids"].shape[1]:]
    texts = tok.batch_decode(new, skip_special_tokens=True)
    lengths = [int(((row != tok.pad_token_id) & (row != tok.eos_token_id)).sum()) for row in new]
    return [t.strip() for t in texts], lengths


def prompt_length(processor, ex: Example) -> int:
    return len(tokenizer_of(processor)(ex.prompt)["input_ids"])


def predict(
    model,
    processor,
    examples: list[Example],
    choices_of: dict[str, list[str]],
    model_name: str,
    batch_size: int = 32,
    max_new_tokens: int = 512,
    done: dict[str, dict] | None = None,
    on_batch: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Predict every example; rows in the order of `examples`.

    `done` holds rows already finished by an earlier, interrupted run (they are not redone);
    `on_batch` receives each finished batch's rows (to persist them as they arrive).
    """
    done = dict(done or {})
    todo = [ex for ex in examples if ex.pid not in done]
    # Similar lengths together: less padding, fewer wasted decoding steps.
    todo.sort(key=lambda ex: prompt_length(processor, ex))
    model.eval()
    with tqdm(total=len(examples), initial=len(examples) - len(todo), desc=f"infer {model_name}", unit="q") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            t0 = time.perf_counter()
            texts, lengths = generate_batch(model, processor, batch, max_new_tokens)
            per_item = (time.perf_counter() - t0) / len(batch)
            rows = [
                {"pid": ex.pid, "model": model_name, "raw": text, "choice": extract_choice(text, choices_of[ex.pid]),
                 "new_tokens": n, "seconds": per_item}
                for ex, text, n in zip(batch, texts, lengths)
            ]
            for row in rows:
                done[row["pid"]] = row
            if on_batch is not None:
                on_batch(rows)
            bar.update(len(batch))
    return [done[ex.pid] for ex in examples]


def examples_from_rows(rows: list[dict]) -> list[Example]:
    from svrd.prompts import format_question

    return [Example(r["pid"], r.get("image"), format_question(r)) for r in rows]


def accuracy_on(model, processor, rows: list[dict], max_new_tokens: int, batch_size: int = 32) -> float:
    """Greedy accuracy in percent on `rows` (the distill stage's per-epoch val/acc)."""
    was_training = model.training
    preds = predict(model, processor, examples_from_rows(rows), {r["pid"]: r["choices"] for r in rows}, "val",
                    batch_size, max_new_tokens)
    if was_training:
        model.train()
    correct = sum(p["choice"] == r["answer"] for p, r in zip(preds, rows))
    return round(100.0 * correct / max(1, len(rows)), 2)


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


def _fingerprint(model_path: str, params, pids: list[str]) -> str:
    """Identifies an inference run, so partial results are reused only by the same run."""
    import hashlib
    import json
    from pathlib import Path

    h = hashlib.sha256()
    local = Path(model_path)
    files = sorted(local.rglob("*")) if local.is_dir() else []
    # Name, size and mtime of a local model's files: cheap, and changes whenever distill rewrites it.
    h.update(json.dumps([model_path] + [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]).encode())
    h.update(json.dumps({"infer": params.infer.model_dump(exclude={"models"})}, sort_keys=True).encode())
    h.update("\n".join(pids).encode())
    return h.hexdigest()[:16]


def run_inference(params, name: str, test_rows: list[dict]) -> tuple[list[dict], dict]:
    """Load the model of infer.models[name], predict the test rows, resume from a partial run."""
    import json
    import os

    from svrd.models import load_model, load_processor, pick_device, pick_dtype
    from svrd.stage import cache_dir

    path = resolve_model_path(params, name)
    opts = params.infer
    trust = params.student.trust_remote_code
    device = pick_device()
    partial = cache_dir() / "infer" / f"{name}-{_fingerprint(path, params, [r['pid'] for r in test_rows])}.jsonl"
    done: dict[str, dict] = {}
    if partial.exists():
        for line in partial.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything before it is intact
            done[row["pid"]] = row
    model = load_model(path, trust, pick_dtype("auto", device)).to(device)
    processor = load_processor(path, trust)
    partial.parent.mkdir(parents=True, exist_ok=True)

    with open(partial, "a", encoding="utf-8") as log:
        def persist(rows: list[dict]) -> None:
            for row in rows:
                log.write(json.dumps(row) + "\n")
            log.flush()
            os.fsync(log.fileno())

        t0 = time.perf_counter()
        rows = predict(model, processor, examples_from_rows(test_rows), {r["pid"]: r["choices"] for r in test_rows},
                       name, opts.batch_size, opts.max_new_tokens, done=done, on_batch=persist)
        wall = time.perf_counter() - t0
    partial.unlink()
    new_tokens = sum(r["new_tokens"] for r in rows)
    gen_seconds = sum(r["seconds"] for r in rows)
    stats = {
        "model": path,
        "parameters": sum(p.numel() for p in model.parameters()),
        "questions": len(rows),
        "resumed": len(done),
        "wall_s": round(wall, 2),
        "generate_s": round(gen_seconds, 2),
        "questions_per_s": round(len(rows) / gen_seconds, 2) if gen_seconds else 0.0,
        "tokens_per_s": round(new_tokens / gen_seconds, 1) if gen_seconds else 0.0,
        "unparseable": sum(r["choice"] is None for r in rows),
        "batch_size": opts.batch_size,
    }
    return rows, stats
