"""The teach stage's library: candidates from a teacher backend, cached, verified, chosen.

For each question (train and val only; a test pid raises LeakageError) the teacher writes up
to `teach.samples` candidates, one round at a time: round k asks for sample k of the
questions with no agreeing candidate yet. A candidate agrees when the option its
<CONCLUSION> names (svrd.answers.extract_choice) is the gold answer and its summary, caption
and reasoning are all non-empty. The first agreeing candidate is kept (outcome "agreed");
when none agrees `teach.on_disagree` decides: substitute (keep the rationale, rewrite the
conclusion to the gold letter, as the paper did), answer_only (keep the row with empty
rationale fields: distill trains on the answer alone) or drop (no row).

A substituted rationale is checked: when its reasoning names an option of its own
(svrd.answers.reasoning_choice) other than the gold one, pasting the gold letter under it
would teach a contradiction; `teach.on_contradiction` keeps (and counts) or drops such rows.
Outputs cut before their <CONCLUSION> (e.g. at teach.max_new_tokens) are counted apart.

Every answer is committed to the cache as it arrives (svrd.teach.cache), keyed by the content
of the request, so a killed run resumes without repeating a request and a changed question is
asked again even under the same pid.
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

from svrd.answers import extract_choice, reasoning_choice
from svrd.errors import LeakageError, SvrdError
from svrd.io import read_rows, write_json, write_table
from svrd.rationale import Rationale, format_conclusion, parse_rationale
from svrd.records import LETTERS
from svrd.teach.base import Job
from svrd.teach.cache import AnswerCache, NullCache, cache_key, default_cache_path, request_digest
from svrd.teach.prompt import PROMPT_VERSION, build_prompt

BACKENDS = ("reference", "openai", "hf")
ON_DISAGREE = ("substitute", "drop", "answer_only")
ON_CONTRADICTION = ("keep", "drop")
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
        ("reasoning_choice", pa.int64()),  # the option the <REASONING> stage itself names, if any
        ("contradicts", pa.bool_()),  # that option is not the gold answer
        ("cut", pa.bool_()),  # the teacher's output stopped before its <CONCLUSION>
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
    reasoning_choice: int | None
    contradicts: bool

    @property
    def letter(self) -> str | None:
        return LETTERS[self.choice] if self.choice is not None and self.choice < len(LETTERS) else None

    @property
    def has_rationale(self) -> bool:
        r = self.rationale
        return bool(r.summary.strip() and r.caption.strip() and r.reasoning.strip())

    @property
    def cut(self) -> bool:
        """No conclusion was written: the output ended (or was cut off) before it."""
        return not self.rationale.conclusion.strip()


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
    choices = list(rec["choices"])
    choice = extract_choice(rationale.conclusion, choices) if rationale.conclusion else None
    own = reasoning_choice(raw, choices)
    return Candidate(sample, raw, rationale, choice, own, own is not None and own != int(rec["answer"]))


def _substitute_pick(cands: list[Candidate]) -> Candidate:
    """The candidate to put the gold letter under: one with a full rationale whose reasoning does
    not contradict the gold answer, preferring one that reached its conclusion; else the first."""
    for usable in (lambda c: c.has_rationale and not c.contradicts and not c.cut,
                   lambda c: c.has_rationale and not c.contradicts,
                   lambda c: c.has_rationale):
        found = next((c for c in cands if usable(c)), None)
        if found is not None:
            return found
    return cands[0]


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
        "reasoning_choice": cand.reasoning_choice,
        "contradicts": cand.contradicts,
        "cut": cand.cut,
        "outcome": outcome,
        **provenance,
    }


def teach(rows: list[dict], cfg, *, cache_path: str | Path | None = None, backend=None, progress: bool = True) -> TeachResult:
    """Run the teacher over `rows` (problem records) and return one rationale row per kept pid."""
    start = time.perf_counter()
    check_rows(rows)
    if cfg.on_disagree not in ON_DISAGREE:
        raise SvrdError(f"teach.on_disagree must be one of {ON_DISAGREE}, got {cfg.on_disagree!r}")
    if cfg.on_contradiction not in ON_CONTRADICTION:
        raise SvrdError(f"teach.on_contradiction must be one of {ON_CONTRADICTION}, got {cfg.on_contradiction!r}")
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
    stale = cache.stale_entries()
    if stale:
        print(f"teach: {stale} cached answers in {cache.path} were keyed by pid (an older key format);"
              " they are ignored and never reused", file=sys.stderr)
    candidates: dict[str, list[Candidate]] = {str(r["pid"]): [] for r in rows}
    by_pid = {str(r["pid"]): r for r in rows}
    prompts = {pid: build_prompt(rec) for pid, rec in by_pid.items()}
    requests = {pid: request_digest(prompts[pid], rec.get("image")) for pid, rec in by_pid.items()}
    kept: dict[str, Candidate] = {}
    counts = {"requests": 0, "cached": 0, "cut_outputs": 0}
    bar = tqdm(total=len(rows), desc=f"teach ({backend.name})", unit="q", disable=not progress, file=sys.stderr)

    def key(pid: str, sample: int) -> str:
        return cache_key(backend.name, backend.model, generation, requests[pid], sample)

    def accept(pid: str, sample: int, raw: str) -> None:
        rec = by_pid[pid]
        cand = _candidate(sample, raw, rec)
        candidates[pid].append(cand)
        counts["cut_outputs"] += cand.cut
        if _agrees(cand, rec):
            kept[pid] = cand
            bar.update(1)
        elif sample == samples - 1:
            bar.update(1)

    def deliver(job: Job, raw: str) -> None:
        cache.put(key(job.pid, job.sample), raw, pid=job.pid, sample=job.sample, backend=backend.name,
                  model=backend.model, prompt_version=PROMPT_VERSION, request=requests[job.pid])
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
                    jobs.append(Job(pid, sample, by_pid[pid], prompts[pid]))
            backend.generate(jobs, deliver)
    finally:
        bar.close()
        cache.close()
        backend.close()

    out: list[dict] = []
    outcomes = dict.fromkeys(OUTCOMES, 0) | {"dropped": 0}
    checks = {"contradicting": 0, "cut": 0, "dropped_contradicting": 0}
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
                outcome, cand = "substituted", _substitute_pick(cands)
                checks["contradicting"] += cand.contradicts
                checks["cut"] += cand.cut
                if cand.contradicts and cfg.on_contradiction == "drop":
                    checks["dropped_contradicting"] += 1
                    outcomes["dropped"] += 1
                    continue
            else:
                outcome, cand = "answer_only", cands[0]
        outcomes[outcome] += 1
        out.append(_row(rec, cand, outcome, provenance))

    metrics = {
        "questions": len(rows),
        "requests": counts["requests"],
        "cached": counts["cached"],
        **outcomes,
        **checks,
        "cut_outputs": counts["cut_outputs"],
        "wall_s": round(time.perf_counter() - start, 3),
    }
    if getattr(backend, "retries", None) is not None:
        metrics["retries"] = backend.retries
    summary = (
        f"teach: {metrics['questions']} questions via {backend.name}:{backend.model} (prompt {PROMPT_VERSION}):"
        f" {metrics['agreed']} agreed, {metrics['substituted']} substituted, {metrics['answer_only']} answer_only,"
        f" {metrics['dropped']} dropped; given the gold letter: {metrics['contradicting']} contradicting their"
        f" reasoning ({'dropped' if cfg.on_contradiction == 'drop' else 'kept'}), {metrics['cut']} cut before"
        f" the conclusion; {metrics['cut_outputs']} teacher outputs cut in all;"
        f" {metrics['requests']} requests, {metrics['cached']} cached;"
        f" {metrics['wall_s']:.1f} s"
    )
    return TeachResult(out, metrics, summary, str(cache.path) if cache.path else None,
                       extra={"stale_cache_entries": stale})


def write_outputs(result: TeachResult, rationales_path: str | Path, metrics_path: str | Path) -> None:
    write_table(rationales_path, pa.Table.from_pylist(result.rows, schema=RATIONALE_SCHEMA))
    write_json(metrics_path, result.metrics)
