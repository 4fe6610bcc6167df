"""The offline, deterministic reference teacher.

It composes the four-stage rationale from the record's own fields, so the default pipeline
runs with no model at all: SUMMARY restates the question, CAPTION is the
record's caption, REASONING is ScienceQA's solution (or its lecture), CONCLUSION the gold
letter. Its text then goes through the same parse/verify path as a real teacher's.
"""

from __future__ import annotations

from svrd.rationale import format_rationale
from svrd.records import LETTERS
from svrd.teach.base import Deliver, Job

NEUTRAL_CAPTION = "The image shows the figure that accompanies the question."


def compose(rec: dict) -> str:
    question = rec["question"].strip()
    # One sentence, like LLaVA-CoT's summaries: restating the hint and options would only
    # teach a small student to copy its prompt.
    summary = f"The question asks: {question}"
    caption = (rec.get("caption") or "").strip() or NEUTRAL_CAPTION
    reasoning = (rec.get("solution") or "").strip() or (rec.get("lecture") or "").strip()
    if not reasoning:
        reasoning = f"Comparing the options with the image, the answer is {rec['choices'][int(rec['answer'])].strip()}."
    return format_rationale(summary, caption, reasoning, LETTERS[int(rec["answer"])])


class ReferenceBackend:
    name = "reference"
    cacheable = False  # free and deterministic: nothing to save

    def __init__(self, cfg):
        self.model = "reference"  # no model: provenance says so whatever teach.model holds
        self.requests = 0

    def generate(self, jobs: list[Job], deliver: Deliver) -> None:
        for job in jobs:
            self.requests += 1
            deliver(job, compose(job.rec))

    def close(self) -> None:
        pass
