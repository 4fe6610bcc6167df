"""infer: batched greedy decoding over the test split, one predictions row per pid.

The published code decoded one question at a time and re-decoded every image on each access;
here prompts are length-sorted into batches, left-padded, and generated together.

Four answering modes (`infer.mode`):

- `generate`: the answer is what the greedy output's conclusion says (`extract_choice`); an
  output that commits to no option is null (unparseable, scored as wrong).
- `likelihood`: the model still writes its own greedy rationale (the same output as in
  `generate`), then the answer is the option whose conclusion the model finds most probable
  right after the `<CONCLUSION>` tag. The rationale prefix is the greedy output up to and
  including its first `<CONCLUSION>` opening tag; when the model never writes one (an
  answer-only output without tags, or an output cut off by `max_new_tokens`), "<CONCLUSION>"
  is appended after everything it wrote (EOS removed). Each option's continuation is scored
  by the sum of its token log-probabilities: `letter` " A" (the letter's tokens only),
  `letter_text` " A. attract </CONCLUSION>", `text` " attract </CONCLUSION>" (with the closing tag,
  so an option that is a prefix of another, "red" and "red and blue", is not favoured).
  The answer can never be unparseable. `choice_text` keeps what the written conclusion said,
  so the score stage can count right reasoning with a wrong written conclusion.
- `self_consistency`: besides the greedy output, `infer.samples` chains are sampled per question
  (temperature `infer.temperature`, no top-k/top-p cut, one `generate()` call per batch with
  `num_return_sequences`, seeded per batch from `infer.seed` and the batch's pids, so a fixed seed
  and batch size give the same rows) and the answer is their majority vote (`majority_vote`):
  a chain votes for the option its conclusion commits to (`extract_choice`); unparseable chains do
  not vote; no vote at all gives null (unparseable, scored as wrong); a tie between the most voted
  options goes to the greedy output's answer when it is one of them, else null. The greedy output
  casts no vote of its own. `raw` is the first sampled chain that voted for the answer (the first
  sampled chain when the answer is null), `choice_text` its own parse (equal to `choice` unless the
  answer is null), `votes` each option's vote count (a JSON list, one count per option), and
  `new_tokens` every token generated for the question (greedy output and samples).
- `stage_beam`: LLaVA-CoT's stage-level beam search (svrd/stage_beam.py): the rationale is sampled one
  tagged stage at a time, `infer.beam.candidates` candidates per stage, and a judge (`infer.beam.judge`)
  keeps one before the next stage; `raw` is the kept stages, parsed as in generate mode. The greedy
  output still runs, as the cost baseline only: `new_tokens` counts it and every candidate sampled;
  `beam_generated` / `beam_judged` count candidates and judge calls, the metrics `cost_vs_greedy`.

Left padding is safe: generation (and the likelihood pass, which builds its position ids the
way `generate` does, from the attention mask) gives the same tokens at any batch size; see
tests/test_infer.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from svrd.answers import extract_choice
from svrd.baselines import kosmos2
from svrd.baselines.kosmos2 import clean_output
from svrd.examples import Example, messages_for, tokenizer_of
from svrd.images import open_png
from svrd.io import atomic_path
from svrd.rationale import TAG_RE
from svrd.records import LETTERS

log = logging.getLogger(__name__)

MODES = ("generate", "likelihood", "self_consistency", "stage_beam")
LIKELIHOOD_ANSWERS = ("letter", "letter_text", "text")
CONCLUSION_TAG = "<CONCLUSION>"
CLOSING_TAG = "</CONCLUSION>"

PREDICTION_SCHEMA = pa.schema(
    [
        ("pid", pa.string()),
        ("model", pa.string()),
        ("mode", pa.string()),  # generate | likelihood | self_consistency | stage_beam
        ("raw", pa.string()),  # the greedy output (self_consistency: the first sampled chain voting for choice), special tokens removed
        ("choice", pa.int64()),  # the scored answer: generate: = choice_text; likelihood: the most probable option;
                                 # self_consistency: the majority vote
        ("choice_text", pa.int64()),  # what `raw` commits to (extract_choice); null when nothing
        ("option_logprobs", pa.list_(pa.float64())),  # likelihood: each option's log-probability; null otherwise
        ("votes", pa.string()),  # self_consistency: JSON list, each option's vote count; null otherwise
        ("new_tokens", pa.int64()),  # self_consistency, stage_beam: greedy output and all samples together
        ("beam_generated", pa.int64()),  # stage_beam: candidates sampled, all stages; null otherwise
        ("beam_judged", pa.int64()),  # stage_beam: judge calls (comparisons; likelihood: candidates scored)
    ]
)  # no timings: predict's rows carry "seconds" until run_inference moves them to metrics/


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


def eos_ids(model, tok) -> list[int]:
    """The tokens that end a generation: the model's generation config's (a list where the model has
    several, e.g. Llama 3's <|eot_id|> and <|end_of_text|>); the tokenizer's EOS only when it names none."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is None:
        configured = tok.eos_token_id
    ids = configured if isinstance(configured, (list, tuple)) else [configured]
    return [int(i) for i in ids if i is not None]


def _stop_ids(tok, eos: list[int] | None = None) -> set[int]:
    """Where a generated row ends: any of `eos` (eos_ids; default the tokenizer's EOS) or padding."""
    return {i for i in (*(eos if eos is not None else [tok.eos_token_id]), tok.pad_token_id) if i is not None}


def _generated_ids(row: torch.Tensor, stop: set[int]) -> list[int]:
    """The tokens a sequence generated, up to (without) its first EOS or padding."""
    ids = row.tolist()
    for k, i in enumerate(ids):
        if i in stop:
            return ids[:k]
    return ids


@torch.inference_mode()
def generate_ids(model, processor, inputs: dict, max_new_tokens: int, min_new_tokens: int = 0) -> list[list[int]]:
    """Greedy decoding of an encoded batch; each row's new tokens (EOS and padding removed)."""
    tok = tokenizer_of(processor)
    extra = {"min_new_tokens": min_new_tokens} if min_new_tokens else {}
    eos = eos_ids(model, tok)
    out = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        pad_token_id=tok.pad_token_id, eos_token_id=eos, **extra,
    )
    new = out[:, inputs["input_ids"].shape[1]:]
    stop = _stop_ids(tok, eos)
    return [_generated_ids(row, stop) for row in new]


def _to_device(model, inputs):
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


def generate_batch(model, processor, examples: list[Example], max_new_tokens: int,
                   min_new_tokens: int = 0) -> tuple[list[str], list[int]]:
    """Greedy outputs (stripped text) and their lengths in new tokens."""
    ids = generate_ids(model, processor, _to_device(model, encode_batch(processor, examples)), max_new_tokens,
                       min_new_tokens)
    return [answer_text(processor, i) for i in ids], [len(i) for i in ids]


def answer_text(processor, ids: list[int]) -> str:
    """Generated ids as extract_choice reads them: decoded without special tokens, KOSMOS-2's
    grounding markup stripped (svrd.baselines.kosmos2), ends stripped."""
    return clean_output(processor, tokenizer_of(processor).decode(ids, skip_special_tokens=True)).strip()


# ---------------------------------------------------------------- likelihood answering

def _opens_conclusion(text: str) -> bool:
    return any(m.group(1) == "" and m.group(2).lower() == "conclusion" for m in TAG_RE.finditer(text))


def rationale_prefix(tok, generated: list[int]) -> list[int]:
    """The generated tokens up to and including the first <CONCLUSION> opening tag; when there is
    none, all of them followed by the tokens of "<CONCLUSION>"."""
    def has_tag(k: int) -> bool:
        return _opens_conclusion(tok.decode(generated[:k], skip_special_tokens=False))

    if not generated or not has_tag(len(generated)):
        return list(generated) + tok(CONCLUSION_TAG, add_special_tokens=False)["input_ids"]
    lo, hi = 1, len(generated)  # the shortest prefix whose text opens the conclusion
    while lo < hi:
        mid = (lo + hi) // 2
        if has_tag(mid):
            hi = mid
        else:
            lo = mid + 1
    return list(generated[:lo])


def option_continuation(index: int, choices: list[str], style: str) -> str:
    """What follows "<CONCLUSION>" when the conclusion picks option `index`."""
    letter, text = LETTERS[index], " ".join(str(choices[index]).split())
    if style == "letter":
        return f" {letter}"
    if style == "letter_text":
        return f" {letter}. {text} {CLOSING_TAG}"
    if style == "text":
        return f" {text} {CLOSING_TAG}"
    raise ValueError(f"unknown infer.likelihood_answer {style!r}; expected one of {LIKELIHOOD_ANSWERS}")


def continuation_ids(tok, continuation: str) -> list[int]:
    """Tokens of `continuation` as they follow the tag (tokenized together with it when the tag's
    own tokens come out unchanged, so a leading space merges as it would in running text)."""
    tag = tok(CONCLUSION_TAG, add_special_tokens=False)["input_ids"]
    both = tok(CONCLUSION_TAG + continuation, add_special_tokens=False)["input_ids"]
    if both[:len(tag)] == tag and len(both) > len(tag):
        return both[len(tag):]
    return tok(continuation, add_special_tokens=False)["input_ids"]


def _position_ids(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, extra: dict) -> torch.Tensor | None:
    """Position ids as `generate` builds them (from the attention mask, so left padding does not
    shift positions; families with their own scheme, e.g. multimodal RoPE, override the method)."""
    import inspect

    if "position_ids" not in inspect.signature(model.forward).parameters:
        return None
    prepare = getattr(model, "_prepare_position_ids_for_generation", None)
    if prepare is not None:
        try:
            return prepare(input_ids, {"input_ids": input_ids, "attention_mask": attention_mask, **extra})
        except Exception:  # noqa: BLE001 - an unexpected override: fall back to the plain rule
            pass
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.inference_mode()
def score_continuations(model, processor, inputs: dict, prefixes: list[list[int]],
                        continuations: list[list[list[int]]]) -> list[list[float]]:
    """Sum of log-probabilities of each row's continuations after its prompt and prefix.

    `inputs` is the encoded (left-padded) prompt batch; round j scores every row's j-th
    continuation in one forward pass over the same rows (so image tensors are reused as they
    are), re-padded on the left; rows with fewer continuations repeat their first one, unscored.
    """
    tok = tokenizer_of(processor)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
    scores: list[list[float]] = [[] for _ in prompts]
    for j in range(max(len(c) for c in continuations)):
        conts = [c[j] if j < len(c) else c[0] for c in continuations]
        seqs = [p + q + c for p, q, c in zip(prompts, prefixes, conts, strict=True)]
        longest = max(len(s) for s in seqs)
        batch_ids = torch.full((len(seqs), longest), pad, dtype=torch.long)
        batch_mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for i, s in enumerate(seqs):
            batch_ids[i, longest - len(s):] = torch.tensor(s, dtype=torch.long)
            batch_mask[i, longest - len(s):] = 1
        batch_ids, batch_mask = batch_ids.to(model.device), batch_mask.to(model.device)
        keep = max(len(c) for c in conts) + 1  # logits only where continuation tokens are predicted
        kwargs = dict(extra)
        positions = _position_ids(model, batch_ids, batch_mask, extra)
        if positions is not None:
            kwargs["position_ids"] = positions
        out = model(input_ids=batch_ids, attention_mask=batch_mask, logits_to_keep=keep, use_cache=False, **kwargs)
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)  # [rows, keep, vocab]
        for i, c in enumerate(conts):
            if j >= len(continuations[i]):
                continue
            n = len(c)
            # Token c[t] sits at sequence position longest-n+t and is predicted at position longest-n+t-1,
            # which is index keep-n-1+t among the kept logits.
            steps = logprobs[i, keep - n - 1:keep - 1]
            scores[i].append(float(steps.gather(-1, torch.tensor(c, device=steps.device)[:, None]).sum()))
    return scores


# ---------------------------------------------------------------- self-consistency answering

def majority_vote(parses: list[int | None], n_options: int, greedy: int | None = None) -> tuple[int | None, list[int], bool]:
    """The majority answer of sampled chains' parsed choices: (choice, votes per option, tied).

    Unparseable chains (None) do not vote; with no vote the choice is None. When several options
    share the most votes (`tied`), the greedy output's answer wins if it is one of them, else None.
    """
    votes = [0] * n_options
    for p in parses:
        if p is not None and 0 <= p < n_options:
            votes[p] += 1
    top = max(votes, default=0)
    if top == 0:
        return None, votes, False
    leaders = [k for k, v in enumerate(votes) if v == top]
    if len(leaders) == 1:
        return leaders[0], votes, False
    return (greedy if greedy in leaders else None), votes, True


def _self_consistency_rows(model, processor, examples: list[Example], choices: list[list[str]], rows: list[dict],
                           max_new_tokens: int, samples: int, temperature: float, seed: int,
                           min_new_tokens: int) -> None:
    """Replace each greedy row's answer by the majority vote of `samples` sampled chains (in place)."""

    from svrd.prefer import sample_batch  # svrd.prefer imports this module: import here

    chains = sample_batch(model, processor, examples, samples, temperature, 1.0, max_new_tokens, seed, min_new_tokens)
    for row, sampled, opts in zip(rows, chains, choices, strict=True):
        texts = [clean_output(processor, c["text"]).strip() for c in sampled]
        parses = [extract_choice(t, opts) for t in texts]
        choice, votes, tied = majority_vote(parses, len(opts), row["choice_text"])
        first = next((i for i, p in enumerate(parses) if p == choice), 0) if choice is not None else 0
        row.update(raw=texts[first], choice=choice, choice_text=parses[first], votes=json.dumps(votes),
                   new_tokens=row["new_tokens"] + sum(c["new_tokens"] for c in sampled), tied=tied)


def answer_batch(model, processor, examples: list[Example], choices: list[list[str]], max_new_tokens: int,
                 mode: str = "generate", likelihood_answer: str = "letter", min_new_tokens: int = 0,
                 samples: int = 5, temperature: float = 0.7, seed: int = 0, beam=None) -> list[dict]:
    """One batch: greedy outputs, in likelihood mode the options' log-probabilities, in
    self_consistency mode the majority vote of `samples` sampled chains (`majority_vote`), in
    stage_beam mode the stage-level beam search's output (`beam`: params.infer.beam).

    Returns per example {"raw", "choice", "choice_text", "option_logprobs", "votes", "new_tokens"}
    (self_consistency adds "tied", which run_inference counts and drops; stage_beam the beam_*
    columns and "greedy_tokens" / "judge_tokens", which svrd.stage_beam.beam_stats takes out).
    """
    if mode not in MODES:
        raise ValueError(f"unknown infer.mode {mode!r}; expected one of {MODES}")
    tok = tokenizer_of(processor)
    inputs = _to_device(model, encode_batch(processor, examples))
    generated = generate_ids(model, processor, inputs, max_new_tokens, min_new_tokens)
    texts = [answer_text(processor, g) for g in generated]
    rows = []
    for text, g, opts in zip(texts, generated, choices, strict=True):
        picked = extract_choice(text, opts)
        rows.append({"raw": text, "choice": picked, "choice_text": picked, "option_logprobs": None, "votes": None,
                     "new_tokens": len(g)})
    if mode == "likelihood":
        prefixes = [rationale_prefix(tok, g) for g in generated]
        conts = [[continuation_ids(tok, option_continuation(k, opts, likelihood_answer)) for k in range(len(opts))]
                 for opts in choices]
        scores = score_continuations(model, processor, inputs, prefixes, conts)
        for row, s in zip(rows, scores, strict=True):
            row["option_logprobs"] = [round(x, 6) for x in s]
            row["choice"] = max(range(len(s)), key=lambda k: (s[k], -k))  # ties: the first option
    if mode == "self_consistency":
        _self_consistency_rows(model, processor, examples, choices, rows, max_new_tokens, samples, temperature, seed,
                               min_new_tokens)
    if mode == "stage_beam":
        from svrd.stage_beam import stage_beam_rows  # svrd.stage_beam imports this module: import here

        stage_beam_rows(model, processor, examples, choices, rows, max_new_tokens, beam, seed)
    return rows


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
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            t0 = time.perf_counter()
            answers = answer_batch(model, processor, batch, [choices_of[ex.pid] for ex in batch], max_new_tokens,
                                   mode, likelihood_answer, min_new_tokens, samples, temperature, seed, beam)
            per_item = (time.perf_counter() - t0) / len(batch)
            rows = [{"pid": ex.pid, "model": model_name, "mode": mode, **a, "seconds": per_item}
                    for ex, a in zip(batch, answers, strict=True)]
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
    correct = sum(p["choice"] == r["answer"] for p, r in zip(preds, rows, strict=True))
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
    from pathlib import Path

    h = hashlib.sha256()
    local = Path(model_path)
    files = sorted(local.rglob("*")) if local.is_dir() else []
    # Name, size and mtime of a local model's files: cheap, and changes whenever distill rewrites it.
    h.update(json.dumps([model_path] + [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]).encode())
    h.update(json.dumps({"infer": params.infer.model_dump(exclude={"models"}),
                         "image_tokens": params.student.image_tokens}, sort_keys=True).encode())
    h.update("\n".join(pids).encode())
    return h.hexdigest()[:16]


def load_partial(path) -> dict[str, dict]:
    """Rows of a partial log, pid -> row. A last line cut by a kill is dropped and cut off the file,
    so rows appended by the resumed run start on a line of their own.

    Lines may name their batch (`"batch": [pids]`, stripped from the rows returned). A batch's rows
    are drawn together (padding, per-batch sampling seeds), and one batch can take several writes,
    so a kill may leave part of one: those rows are dropped and cut off too, and the resumed run
    redoes the batch whole, as an uninterrupted run did it."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    lines, rows, intact = [], {}, 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        lines.append((row, line))
        rows[row["pid"]] = row
        intact += len(line)
    kept = [(row, line) for row, line in lines if all(p in rows for p in row.get("batch", [row["pid"]]))]
    if intact < len(data) or len(kept) < len(lines):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"".join(line for _, line in kept))
    return {row["pid"]: {k: v for k, v in row.items() if k != "batch"} for row, _ in kept}


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
    partial = cache_dir() / "infer" / f"{name}-{_fingerprint(path, params, [r['pid'] for r in test_rows])}.jsonl"
    done = load_partial(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
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

    with partial_log(partial) as persist:
        t0 = time.perf_counter()
        rows = predict(model, processor, examples_from_rows(test_rows), {r["pid"]: r["choices"] for r in test_rows},
                       name, opts.batch_size, opts.max_new_tokens, done=done, on_batch=persist, mode=opts.mode,
                       likelihood_answer=opts.likelihood_answer, samples=opts.samples,
                       temperature=opts.temperature, seed=opts.seed, beam=opts.beam)
        wall = time.perf_counter() - t0
    partial.unlink()
    stats = _timing_stats(rows, pop_seconds(rows), path, sum(p.numel() for p in model.parameters()), len(done),
                          wall, opts)
    stats["image_tokens"] = image_tokens if image_tokens is not None else count_image_tokens(processor)
    if opts.mode == "likelihood":
        # The written conclusion against the likelihood answer (never unparseable itself).
        stats["text_unparseable"] = sum(r["choice_text"] is None for r in rows)
        stats["text_differs"] = sum(r["choice_text"] != r["choice"] for r in rows)
    if opts.mode == "self_consistency":
        stats.update(self_consistency_stats(rows, opts.samples), temperature=opts.temperature, seed=opts.seed)
    if opts.mode == "stage_beam":
        from svrd.stage_beam import beam_stats

        stats.update(beam_stats(rows, opts.beam), seed=opts.seed)
    for row in rows:
        row.pop("tied", None)  # counted above; not a column
    return rows, stats


@contextlib.contextmanager
def partial_log(path):
    """Yields `persist(rows)`, which appends finished rows to `path` and fsyncs: a killed run loses
    at most the batch in flight (load_partial reads the file back)."""
    with open(path, "a", encoding="utf-8") as log:
        def persist(rows: list[dict]) -> None:
            batch = [row["pid"] for row in rows]  # see load_partial: a batch cut short is redone whole
            for row in rows:
                log.write(json.dumps({**row, "batch": batch}) + "\n")
            log.flush()
            os.fsync(log.fileno())

        yield persist


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

    from svrd.vllm_engine import predict_vllm

    with partial_log(partial) as persist:
        t0 = time.perf_counter()
        rows = predict_vllm(path, examples_from_rows(test_rows), {r["pid"]: r["choices"] for r in test_rows}, name,
                            opts.max_new_tokens, trust, done=done, on_batch=persist)
        wall = time.perf_counter() - t0
    partial.unlink()
    # vLLM holds the weights in its own process: count them from the safetensors headers instead.
    return rows, _timing_stats(rows, pop_seconds(rows), path, parameters_on_disk(path), len(done), wall, opts)


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


def self_consistency_stats(rows: list[dict], samples: int) -> dict:
    """ties: questions whose most voted options tied (resolved by the greedy answer or not);
    ties_unresolved: those left null; no_vote: questions where no sampled chain parsed;
    mean_agreement: mean over questions of the most voted option's share of all `samples` chains
    (0 with no vote)."""

    tops = [max(json.loads(r["votes"]), default=0) for r in rows]
    ties = [r for r in rows if r.get("tied")]
    return {
        "samples": samples,
        "ties": len(ties),
        "ties_unresolved": sum(r["choice"] is None for r in ties),
        "no_vote": sum(t == 0 for t in tops),
        "mean_agreement": round(sum(t / samples for t in tops) / len(rows), 4) if rows else 0.0,
    }
