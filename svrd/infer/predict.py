"""Every answering mode over many questions: length-sorted batches, one predictions row per pid.

The published code decoded one question at a time and re-decoded every image on each access;
here prompts are length-sorted into batches, left-padded, and generated together. Left padding is
safe: generation (and the likelihood pass, which builds its position ids the way `generate` does,
from the attention mask) gives the same tokens at any batch size; see tests/test_infer.py.

MODES maps `infer.mode` to its module (svrd/infer/<mode>.py: NAME, `answer`, `run_stats`); a new
mode is a new module listed there.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tqdm import tqdm

from svrd.examples import Example
from svrd.infer import generate, likelihood, self_consistency, stage_beam
from svrd.infer.encoding import examples_from_rows, prompt_length
from svrd.infer.generate import Options

MODES = {m.NAME: m for m in (generate, likelihood, self_consistency, stage_beam)}


def answer_batch(model, processor, examples: list[Example], choices: list[list[str]], max_new_tokens: int,
                 mode: str = "generate", likelihood_answer: str = "letter", min_new_tokens: int = 0,
                 samples: int = 5, temperature: float = 0.7, seed: int = 0, beam=None) -> list[dict]:
    """One batch: greedy outputs, in likelihood mode the options' log-probabilities, in
    self_consistency mode the majority vote of `samples` sampled chains (`majority_vote`), in
    stage_beam mode the stage-level beam search's output (`beam`: params.infer.beam).

    Returns per example {"raw", "choice", "choice_text", "option_logprobs", "votes", "new_tokens"}
    (self_consistency adds "tied", stage_beam the beam_* columns and "greedy_tokens" /
    "judge_tokens", which the mode's run_stats takes out).
    """
    if mode not in MODES:
        raise ValueError(f"unknown infer.mode {mode!r}; expected one of {tuple(MODES)}")
    opts = Options(max_new_tokens, min_new_tokens, likelihood_answer, samples, temperature, seed, beam)
    batch = generate.greedy(model, processor, examples, choices, opts)
    MODES[mode].answer(model, processor, batch, opts)
    return batch.rows


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
    mode: str = "generate",
    likelihood_answer: str = "letter",
    min_new_tokens: int = 0,
    progress: bool = True,
    samples: int = 5,
    temperature: float = 0.7,
    seed: int = 0,
    beam=None,
) -> list[dict]:
    """Predict every example; rows (PREDICTION_SCHEMA) in the order of `examples`.

    `done` holds rows already finished by an earlier, interrupted run (they are not redone);
    `on_batch` receives each finished batch's rows (to persist them as they arrive).
    `min_new_tokens` forces a fixed generation length (benchmarks only); `samples`, `temperature`
    and `seed` apply to self_consistency, `beam` (params.infer.beam) and `seed` to stage_beam.
    """
    done = dict(done or {})
    todo = [ex for ex in examples if ex.pid not in done]
    # Similar lengths together: less padding, fewer wasted decoding steps.
    todo.sort(key=lambda ex: prompt_length(processor, ex))
    model.eval()
    with tqdm(total=len(examples), initial=len(examples) - len(todo), desc=f"infer {model_name}", unit="q",
              disable=not progress) as bar:
        def answer(batch: list[Example]) -> list[dict]:
            answers = answer_batch(model, processor, batch, [choices_of[ex.pid] for ex in batch], max_new_tokens,
                                   mode, likelihood_answer, min_new_tokens, samples, temperature, seed, beam)
            return [{"pid": ex.pid, "model": model_name, "mode": mode, **a} for ex, a in zip(batch, answers, strict=True)]

        in_batches(todo, batch_size, answer, done, on_batch, bar.update)
    return [done[ex.pid] for ex in examples]


def in_batches(todo: list, batch_size: int, answer: Callable[[list], list[dict]], done: dict[str, dict],
               on_batch: Callable[[list[dict]], None] | None = None, advance: Callable[[int], object] | None = None):
    """Answer `todo` batch by batch: `answer(batch)` gives its rows (one per item, keyed by "pid"), each
    row gets its share of the batch's wall time ("seconds") and goes into `done`, and every finished batch
    is handed to `on_batch` (the partial log a killed run resumes from)."""
    for start in range(0, len(todo), max(1, batch_size)):
        batch = todo[start:start + max(1, batch_size)]
        t0 = time.perf_counter()
        rows = answer(batch)
        per_item = (time.perf_counter() - t0) / len(batch)
        for row in rows:
            row["seconds"] = per_item
            done[row["pid"]] = row
        if on_batch is not None:
            on_batch(rows)
        if advance is not None:
            advance(len(batch))


def accuracy_on(model, processor, rows: list[dict], max_new_tokens: int, batch_size: int = 32) -> float:
    """Greedy accuracy in percent on `rows` (the distill stage's per-epoch val/acc)."""
    was_training = model.training
    preds = predict(model, processor, examples_from_rows(rows), {r["pid"]: r["choices"] for r in rows}, "val",
                    batch_size, max_new_tokens)
    if was_training:
        model.train()
    correct = sum(p["choice"] == r["answer"] for p, r in zip(preds, rows, strict=True))
    return round(100.0 * correct / max(1, len(rows)), 2)
