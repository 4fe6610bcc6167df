"""infer.mode=generate: the answer is what the greedy output's conclusion says (`extract_choice`); an
output that commits to no option is null (unparseable, scored as wrong).

Every mode starts from these greedy rows (`greedy`): the other modes' modules change them in
place (`answer`) and add their own figures to the run's metrics (`run_stats`). A mode module has
NAME, `answer(model, processor, batch, opts)` and `run_stats(rows, cfg)`; svrd.infer.predict.MODES
lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

from svrd.answers import extract_choice
from svrd.examples import Example
from svrd.infer.encoding import encode_batch, to_device
from svrd.infer.generation import answer_text, generate_ids

NAME = "generate"


@dataclass(frozen=True)
class Options:
    """What one batch is answered with (predict's arguments; params.infer in a stage run)."""

    max_new_tokens: int
    min_new_tokens: int = 0  # forces a fixed generation length (benchmarks only)
    likelihood_answer: str = "letter"  # likelihood
    samples: int = 5  # self_consistency
    temperature: float = 0.7  # self_consistency
    seed: int = 0  # self_consistency, stage_beam
    beam: object = None  # stage_beam: params.infer.beam


@dataclass
class Batch:
    """One batch's greedy pass: the encoded prompts, each row's generated ids, and its answer row."""

    examples: list[Example]
    choices: list[list[str]]
    inputs: dict
    generated: list[list[int]]
    rows: list[dict]


def greedy(model, processor, examples: list[Example], choices: list[list[str]], opts: Options) -> Batch:
    """Greedy outputs and the rows they answer: {"raw", "choice", "choice_text", "option_logprobs",
    "votes", "new_tokens"} per example."""
    inputs = to_device(model, encode_batch(processor, examples))
    generated = generate_ids(model, processor, inputs, opts.max_new_tokens, opts.min_new_tokens)
    texts = [answer_text(processor, g) for g in generated]
    rows = []
    for text, g, options in zip(texts, generated, choices, strict=True):
        picked = extract_choice(text, options)
        rows.append({"raw": text, "choice": picked, "choice_text": picked, "option_logprobs": None, "votes": None,
                     "new_tokens": len(g)})
    return Batch(examples, choices, inputs, generated, rows)


def answer(model, processor, batch: Batch, opts: Options) -> None:
    """generate mode: the greedy rows are the answers."""


def run_stats(rows: list[dict], cfg) -> dict:
    return {}
