"""The teacher's prompt: the paper's inputs (image, question, hint, options, gold answer,
lecture, solution) and the four tagged stages it must write.

PROMPT_VERSION is a short hash of the template text, so editing the template changes the
rationales' provenance and the cache key (old answers are never reused for a new prompt).
"""

from __future__ import annotations

import hashlib

from svrd.prompts import format_question
from svrd.records import LETTERS

TEMPLATE = """\
You are an expert science teacher writing a step-by-step explanation for a multiple-choice question about the image.

{question}

Correct answer: ({letter}) {answer_text}

Background lecture:
{lecture}

Reference solution:
{solution}

Explain how to reach the correct answer, in exactly four stages, each wrapped in its tags:
<SUMMARY> briefly state what the question asks and how you will approach it </SUMMARY>
<CAPTION> describe the parts of the image that matter for this question </CAPTION>
<REASONING> reason step by step from the image, the context and the relevant knowledge to the answer </REASONING>
<CONCLUSION> the letter of the correct option only, e.g. {letter} </CONCLUSION>
Do not mention that you were given the answer, the lecture or the solution."""

PROMPT_VERSION = hashlib.sha256(TEMPLATE.encode("utf-8")).hexdigest()[:12]


def build_prompt(rec: dict) -> str:
    """The teacher's text prompt for one problem record (the image is sent beside it)."""
    answer = int(rec["answer"])
    return TEMPLATE.format(
        question=format_question(rec),
        letter=LETTERS[answer],
        answer_text=rec["choices"][answer].strip(),
        lecture=(rec.get("lecture") or "").strip() or "(none)",
        solution=(rec.get("solution") or "").strip() or "(none)",
    )
