"""The student's question prompt, shared by distill, infer and the zero-shot teacher.

The published SVRD code dropped the `hint` (ScienceQA's text context), though many image
questions cannot be answered without it; we always include it when present.
"""

from __future__ import annotations

from svrd.records import LETTERS


def format_options(choices: list[str]) -> str:
    return "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


def format_question(rec: dict) -> str:
    """Question, context (hint) and lettered options: what the student sees besides the image."""
    parts = [f"Question: {rec['question'].strip()}"]
    hint = (rec.get("hint") or "").strip()
    if hint:
        parts.append(f"Context: {hint}")
    parts.append("Options:\n" + format_options(rec["choices"]))
    return "\n".join(parts)
