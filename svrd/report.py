"""The markdown report: the paper's Table 1 layout, the official breakdown, rationale quality.

Each model is a dict {"name", "size" (e.g. "0.8M", see param_count_label), "scores"
(scoring.score output), "inference_s" (seconds, or None), "quality"
(quality.rationale_quality output, or None)}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DASH = "–"
# Table 1's topic columns: code -> ScienceQA `topic`.
TOPIC_CODES = {
    "GEO": "geography",
    "PHY": "physics",
    "BIO": "biology",
    "ERS": "earth-science",
    "SAEP": "science-and-engineering-practices",
    "CHE": "chemistry",
    "USH": "us-history",
}
BREAKDOWN = ("all", "NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")


def param_count_label(n: int) -> str:
    """A parameter count as the paper writes it: 800_000 -> "0.8M", 2_246_000_000 -> "2.2B", 113_000_000 -> "113M".

    One decimal below 10 of the unit, whole numbers above; millions from 0.1M up.
    """
    n = int(n)
    if n < 0:
        raise ValueError(f"parameter count must be >= 0, got {n}")
    if n >= 999_500_000:
        value, unit = n / 1e9, "B"
    elif n >= 100_000:
        value, unit = n / 1e6, "M"
    elif n >= 1_000:
        value, unit = n / 1e3, "K"
    else:
        return str(n)
    text = f"{value:.1f}" if value < 9.95 else f"{value:.0f}"
    return (text[:-2] if text.endswith(".0") else text) + unit


def _cell(value: Any, fmt: str = "{:.2f}") -> str:
    if value is None:
        return DASH
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return fmt.format(value)
    return _escape(str(value))


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _acc(scores: Mapping[str, Any] | None, key: str) -> str:
    entry = (scores or {}).get(key)
    if not isinstance(entry, Mapping) or not entry.get("total"):
        return DASH
    return _cell(entry.get("acc"))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _minutes(seconds: Any) -> str:
    if seconds is None:
        return DASH
    minutes = float(seconds) / 60.0
    return f"{minutes:.1f}" if minutes < 100 else f"{minutes:.0f}"


def _short(text: Any, limit: int = 300) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_report(models: list[dict]) -> str:
    """Markdown with three sections: Table 1 (accuracy % per topic, overall, inference
    minutes), the official breakdown (with counts of unparseable/missing/out-of-range), and
    rationale quality (with a few reasoning/conclusion disagreements to read)."""
    out = ["# Results", "", "## Accuracy by topic (the paper's Table 1)", ""]
    header = ["model", "size", *TOPIC_CODES, "overall", "inference (min)"]
    rows = []
    for m in models:
        scores = m.get("scores")
        rows.append([
            _escape(str(m.get("name", "?"))), _cell(m.get("size")),
            *(_acc(scores, f"topic/{topic}") for topic in TOPIC_CODES.values()),
            _acc(scores, "all"), _minutes(m.get("inference_s")),
        ])
    out += _table(header, rows)
    out += ["", "Topics: " + ", ".join(f"{c} = {t}" for c, t in TOPIC_CODES.items()) + f". {DASH}: no question of that topic.",
            "", "## Official ScienceQA breakdown", ""]
    rows = []
    for m in models:
        scores = m.get("scores") or {}
        n = (scores.get("all") or {}).get("total")
        rows.append([
            _escape(str(m.get("name", "?"))), _cell(n, "{:d}"),
            *(_acc(scores, g) for g in BREAKDOWN),
            *(_cell(scores.get(k), "{:d}") for k in ("unparseable", "missing", "out_of_range")),
        ])
    out += _table(["model", "n", *BREAKDOWN, "unparseable", "missing", "out of range"], rows)
    out += ["", "## Rationale quality", ""]
    rows = []
    for m in models:
        q = m.get("quality") or {}
        dis = q.get("disagreement")
        dis_cell = DASH if dis is None else f"{dis:.2f} ({q.get('disagreements', 0)}/{q.get('both_determined', 0)})"
        rows.append([
            _escape(str(m.get("name", "?"))), _cell(q.get("n"), "{:d}"), _cell(q.get("well_formed")),
            _cell(q.get("bleu")), _cell(q.get("rouge_l")), dis_cell,
        ])
    out += _table(["model", "outputs", "well-formed %", "BLEU", "ROUGE-L", "reasoning ≠ conclusion %"], rows)
    out += ["", "BLEU and ROUGE-L compare the <REASONING> stage (the whole rationale when it has none) "
            "with ScienceQA's solution text."]
    for m in models:
        examples = (m.get("quality") or {}).get("examples") or []
        if not examples:
            continue
        out += ["", f"### {m.get('name', '?')}: reasoning and conclusion disagree", ""]
        for ex in examples:
            out.append(
                f"- pid {ex.get('pid')}: reasoning names {ex.get('reasoning_choice')}, "
                f"conclusion picks {ex.get('conclusion_choice')} (gold {ex.get('gold')})"
            )
            out.append(f"  - reasoning: {_short(ex.get('reasoning'))}")
            out.append(f"  - conclusion: {_short(ex.get('conclusion'), 120)}")
    return "\n".join(out) + "\n"


# Table 2's columns: open-ended answers (svrd.open_scoring output) -> header.
OPEN_COLUMNS = {
    "bleu": "BLEU", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L",
    "bertscore_p": "BERTScore P", "bertscore_r": "BERTScore R", "bertscore_f1": "BERTScore F1",
}


def render_open_table(models: list[dict]) -> str:
    """The paper's Table 2 layout: one row per model {"name", "open": open_scoring.score_open output},
    every metric x 100, with the BERTScore model and layer named under the table."""
    out = ["## Open-ended answers (the paper's Table 2)", ""]
    rows = []
    for m in models:
        metrics = m.get("open") or {}
        rows.append([_escape(str(m.get("name", "?"))), _cell(metrics.get("n"), "{:d}"),
                     *(_cell(metrics.get(key)) for key in OPEN_COLUMNS)])
    out += _table(["model", "n", *OPEN_COLUMNS.values()], rows)
    encoders = sorted({(str(m["open"]["bertscore_model"]), m["open"].get("bertscore_layers"))
                       for m in models if (m.get("open") or {}).get("bertscore_model")})
    note = "BLEU: sacrebleu corpus BLEU; ROUGE: mean F1 (rouge-score, stemmed)"
    if encoders:
        note += "; BERTScore: " + ", ".join(f"{name} layer {layers}" for name, layers in encoders)
    out += ["", note + f". {DASH}: not computed."]
    return "\n".join(out) + "\n"
