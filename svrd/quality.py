"""Rationale quality of a model's raw outputs, beside its accuracy.

- `well_formed`: percent of outputs with all four stages, once each, in order, opened and closed;
- `bleu` (sacrebleu corpus BLEU, 0-100) and `rouge_l` (mean ROUGE-L F x 100) of each output's
  <REASONING> stage (the whole rationale without tags when it has none) against ScienceQA's
  `solution`, over the rows whose solution is not empty;
- `disagreement`: percent of outputs whose reasoning names one option (`reasoning_choice`)
  while the conclusion picks another (`extract_choice`), over the outputs where both are
  determined; `examples` lists some of them to read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from svrd.answers import extract_choice, reasoning_choice
from svrd.rationale import parse_rationale, strip_tags
from svrd.records import LETTERS

RAW_KEYS = ("raw", "output", "text")  # where a row keeps the model's raw output, first found wins


def raw_output(row: Mapping[str, Any]) -> str:
    for key in RAW_KEYS:
        value = row.get(key)
        if value is not None:
            return str(value)
    return ""


def _pct(n: int, d: int) -> float | None:
    return round(100.0 * n / d, 2) if d else None


def _letter(index: int | None) -> str:
    return LETTERS[index] if index is not None and 0 <= index < len(LETTERS) else "none"


def rationale_quality(rows: Iterable[Mapping[str, Any]], max_examples: int = 5) -> dict:
    """Quality metrics of raw outputs. Each row: raw output (key `raw`, `output` or `text`),
    `choices`, `answer` (gold index, optional) and `solution` (reference text, optional); `pid` optional.

    Returns {"n", "well_formed", "bleu", "rouge_l", "references", "disagreement",
    "disagreements", "both_determined", "examples"}; percentages are None when undefined.
    """
    n = well_formed = both = disagree = 0
    hyps: list[str] = []
    refs: list[str] = []
    examples: list[dict] = []
    for row in rows:
        n += 1
        text = raw_output(row)
        choices = list(row.get("choices") or [])
        rationale = parse_rationale(text)
        well_formed += rationale.well_formed
        solution = str(row.get("solution") or "").strip()
        if solution:
            hyps.append(rationale.reasoning or strip_tags(text))
            refs.append(solution)
        said = reasoning_choice(text, choices)
        chosen = extract_choice(text, choices)
        if said is not None and chosen is not None:
            both += 1
            if said != chosen:
                disagree += 1
                if len(examples) < max_examples:
                    answer = row.get("answer")
                    examples.append({
                        "pid": None if row.get("pid") is None else str(row.get("pid")),
                        "reasoning": rationale.reasoning,
                        "conclusion": rationale.conclusion,
                        "reasoning_choice": _letter(said),
                        "conclusion_choice": _letter(chosen),
                        "gold": _letter(int(answer)) if answer is not None else None,
                    })
    bleu = rouge_l = None
    if refs:
        import sacrebleu
        from rouge_score import rouge_scorer

        bleu = round(float(sacrebleu.corpus_bleu(hyps, [refs]).score), 2)
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        f = [scorer.score(ref, hyp)["rougeL"].fmeasure for ref, hyp in zip(refs, hyps, strict=True)]
        rouge_l = round(100.0 * sum(f) / len(f), 2)
    return {
        "n": n,
        "well_formed": _pct(well_formed, n),
        "bleu": bleu,
        "rouge_l": rouge_l,
        "references": len(refs),
        "disagreement": _pct(disagree, both),
        "disagreements": disagree,
        "both_determined": both,
        "examples": examples,
    }
