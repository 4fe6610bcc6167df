"""The teach stage's library: candidates from a teacher backend, cached, verified, chosen.

For each question (train and val only; a test pid raises LeakageError) the teacher writes up
to `teach.samples` candidates, one round at a time: round k asks for sample k of the
questions with no agreeing candidate yet. A candidate agrees when the option its
<CONCLUSION> names (svrd.answers.extract_choice) is the gold answer and its summary, caption
and reasoning are all non-empty. The first agreeing candidate is kept (outcome "agreed");
when none agrees `teach.on_disagree` decides: substitute (keep the rationale, rewrite the
conclusion to the gold letter, as the paper did), answer_only (keep the row with empty
rationale fields: distill trains on the answer alone) or drop (no row).

Every answer is committed to the cache as it arrives (svrd.teach.cache), so a killed run
resumes without repeating a request.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from svrd.answers import extract_choice
from svrd.errors import LeakageError, SvrdError
from svrd.io import read_rows, write_json, write_table
from svrd.rationale import Rationale, format_conclusion, parse_rationale
from svrd.records import LETTERS
from svrd.teach.base import Job
from svrd.teach.cache import AnswerCache, NullCache, cache_key, default_cache_path
from svrd.teach.prompt import PROMPT_VERSION, build_prompt

BACKENDS = ("reference", "openai", "hf")
ON_DISAGREE = ("substitute", "drop", "answer_only")
OUTCOMES = ("agreed", "substituted", "answer_only")

RATIONALE_SCHEMA = pa.schema(
    [
        ("pid", pa.string()),
        ("split", pa.string()),
        ("sample", pa.int64()),
        ("raw", pa.string()),
        ("summary", pa.string()),
        ("caption", pa.string()),
        ("reasoning", pa.string()),
        ("conclusion", pa.string()),
        ("letter", pa.string()),
        ("choice", pa.int64()),
        ("correct", pa.bool_()),
        ("well_formed", pa.bool_()),
        ("outcome", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("decoding", pa.string()),
    ]
)


@dataclass
class Candidate:
    sample: int
    raw: str
    rationale: Rationale
    choice: int | None

    @property
    def letter(self) -> str | None:
        return LETTERS[self.choice] if self.choice is not None and self.choice < len(LETTERS) else None

    @property
    def has_rationale(self) -> bool:
        r = self.rationale
        return bool(r.summary.strip() and r.caption.strip() and r.reasoning.strip())


@dataclass
class TeachResult:
    rows: list[dict]
    metrics: dict
    summary: str
    cache_path: str | None = None
    extra: dict = field(default_factory=dict)


def make_backend(cfg):
    if cfg.backend == "reference":
        from svrd.teach.reference import ReferenceBackend

        return ReferenceBackend(cfg)
    if cfg.backend == "openai":
        from svrd.teach.openai_backend import OpenAIBackend

        return OpenAIBackend(cfg)
    if cfg.backend == "hf":
        from svrd.teach.hf_backend import HFBackend

        return HFBackend(cfg)
    raise SvrdError(f"teach.backend must be one of {BACKENDS}, got {cfg.backend!r}")


def read_problems(*paths: str | Path) -> list[dict]:
    rows: list[dict] = []
    for path in paths:
        rows.extend(read_rows(path))
    return rows


def check_rows(rows: list[dict]) -> None:
    """Test pids never reach the teacher; pids are unique."""
    seen: set[str] = set()
    for rec in rows:
        pid = str(rec["pid"])
        if (rec.get("split") or "").strip().lower() == "test":
            raise LeakageError(f"pid {pid} is in the test split: test questions must never reach the teacher")
        if pid in seen:
            raise SvrdError(f"pid {pid} appears twice in the teach input")
        seen.add(pid)


def generation_settings(cfg) -> dict:
    """What determines one candidate's text (part of the cache key)."""
    return {"temperature": float(cfg.temperature), "max_new_tokens": int(cfg.max_new_tokens)}


def _candidate(sample: int, raw: str, rec: dict) -> Candidate:
    rationale = parse_rationale(raw)
    choice = extract_choice(rationale.conclusion, list(rec["choices"])) if rationale.conclusion else None
    return Candidate(sample, raw, rationale, choice)


def _agrees(cand: Candidate, rec: dict) -> bool:
    return cand.choice is not None and cand.choice == int(rec["answer"]) and cand.has_rationale


def _row(rec: dict, cand: Candidate, outcome: str, provenance: dict) -> dict:
    r = cand.rationale
    fields = {"summary": r.summary, "caption": r.caption, "reasoning": r.reasoning, "conclusion": r.conclusion}
    if outcome == "substituted":
        fields["conclusion"] = format_conclusion(int(rec["answer"]), list(rec["choices"]), "letter")
    elif outcome == "answer_only":
        fields = dict.fromkeys(fields, "")
    return {
        "pid": str(rec["pid"]),
        "split": rec.get("split") or "",
        "sample": cand.sample,
        "raw": cand.raw,
        **fields,
        "letter": cand.letter,
        "choice": cand.choice,
        "correct": cand.choice is not None and cand.choice == int(rec["answer"]),
        "well_formed": r.well_formed,
        "outcome": outcome,
        **provenance,
    }


def teach(rows: list[dict], cfg, *, cache_path: str | Path | None = None, backend=None, progress: bool = True) -> TeachResult:
    """Run the teacher over `rows` (problem records) and return one rationale row per kept pid."""
    start = time.perf_counter()
    check_rows(rows)
    if cfg.on_disagree not in ON_DISAGREE:
        raise SvrdError(f"teach.on_disagree must be one of {ON_DISAGREE}, got {cfg.on_disagree!r}")
    samples = int(cfg.samples)
    if samples < 1:
        raise SvrdError(f"teach.samples must be at least 1, got {samples}")
    if samples > 1 and float(cfg.temperature) == 0:
        warnings.warn(
            f"teach.samples={samples} with teach.temperature=0: greedy candidates will be identical;"
            " set teach.temperature > 0 for rejection sampling",
            stacklevel=2,
        )
    backend = backend or make_backend(cfg)
    generation = generation_settings(cfg)
    provenance = {
        "backend": backend.name,
        "model": backend.model,
        "prompt_version": PROMPT_VERSION,
        "decoding": json.dumps({**generation, "samples": samples, "do_sample": generation["temperature"] > 0},
                               sort_keys=True),
    }
    cache = AnswerCache(cache_path or default_cache_path()) if backend.cacheable else NullCache()
    candidates: dict[str, list[Candidate]] = {str(r["pid"]): [] for r in rows}
    by_pid = {str(r["pid"]): r for r in rows}
    kept: dict[str, Candidate] = {}
    counts = {"requests": 0, "cached": 0}
    bar = tqdm(total=len(rows), desc=f"teach ({backend.name})", unit="q", disable=not progress, file=sys.stderr)

    def key(pid: str, sample: int) -> str:
        return cache_key(backend.name, backend.model, PROMPT_VERSION, generation, pid, sample)

    def accept(pid: str, sample: int, raw: str) -> None:
        rec = by_pid[pid]
        cand = _candidate(sample, raw, rec)
        candidates[pid].append(cand)
        if _agrees(cand, rec):
            kept[pid] = cand
            bar.update(1)
        elif sample == samples - 1:
            bar.update(1)

    def deliver(job: Job, raw: str) -> None:
        cache.put(key(job.pid, job.sample), raw, pid=job.pid, sample=job.sample, backend=backend.name,
                  model=backend.model, prompt_version=PROMPT_VERSION)
        counts["requests"] += 1
        accept(job.pid, job.sample, raw)

    try:
        for sample in range(samples):
            pending = [pid for pid in candidates if pid not in kept]
            if not pending:
                break
            keys = {pid: key(pid, sample) for pid in pending}
            hits = cache.get_many(list(keys.values()))
            jobs = []
            for pid in pending:
                if keys[pid] in hits:
                    counts["cached"] += 1
                    accept(pid, sample, hits[keys[pid]])
                else:
                    jobs.append(Job(pid, sample, by_pid[pid], build_prompt(by_pid[pid])))
            backend.generate(jobs, deliver)
    finally:
        bar.close()
        cache.close()
        backend.close()

    out: list[dict] = []
    outcomes = dict.fromkeys(OUTCOMES, 0) | {"dropped": 0}
    for rec in rows:
        pid = str(rec["pid"])
        if pid in kept:
            outcome, cand = "agreed", kept[pid]
        elif cfg.on_disagree == "drop":
            outcomes["dropped"] += 1
            continue
        else:
            cands = sorted(candidates[pid], key=lambda c: c.sample)
            if not cands:  # cannot happen: every pending question gets a candidate per round
                raise SvrdError(f"pid {pid}: the teacher returned no candidate")
            if cfg.on_disagree == "substitute":
                outcome, cand = "substituted", next((c for c in cands if c.has_rationale), cands[0])
            else:
                outcome, cand = "answer_only", cands[0]
        outcomes[outcome] += 1
        out.append(_row(rec, cand, outcome, provenance))

    metrics = {
        "questions": len(rows),
        "requests": counts["requests"],
        "cached": counts["cached"],
        **outcomes,
        "wall_s": round(time.perf_counter() - start, 3),
    }
    if getattr(backend, "retries", None) is not None:
        metrics["retries"] = backend.retries
    summary = (
        f"teach: {metrics['questions']} questions via {backend.name}:{backend.model} (prompt {PROMPT_VERSION}):"
        f" {metrics['agreed']} agreed, {metrics['substituted']} substituted, {metrics['answer_only']} answer_only,"
        f" {metrics['dropped']} dropped; {metrics['requests']} requests, {metrics['cached']} cached;"
        f" {metrics['wall_s']:.1f} s"
    )
    return TeachResult(out, metrics, summary, str(cache.path) if cache.path else None)


def write_outputs(result: TeachResult, rationales_path: str | Path, metrics_path: str | Path) -> None:
    write_table(rationales_path, pa.Table.from_pylist(result.rows, schema=RATIONALE_SCHEMA))
    write_json(metrics_path, result.metrics)
