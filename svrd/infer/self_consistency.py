"""infer.mode=self_consistency: besides the greedy output, `infer.samples` chains are sampled per
question (temperature `infer.temperature`, no top-k/top-p cut, one `generate()` call per batch with
`num_return_sequences`, seeded per batch from `infer.seed` and the batch's pids, so a fixed seed
and batch size give the same rows) and the answer is their majority vote (`majority_vote`).

A chain votes for the option its conclusion commits to (`extract_choice`); unparseable chains do
not vote; no vote at all gives null (unparseable, scored as wrong); a tie between the most voted
options goes to the greedy output's answer when it is one of them, else null. The greedy output
casts no vote of its own. `raw` is the first sampled chain that voted for the answer (the first
sampled chain when the answer is null), `choice_text` its own parse (equal to `choice` unless the
answer is null), `votes` each option's vote count (a JSON list, one count per option), and
`new_tokens` every token generated for the question (greedy output and samples).
"""

from __future__ import annotations

import json

from svrd.answers import extract_choice
from svrd.baselines import kosmos2
from svrd.infer.generate import Batch, Options
from svrd.infer.sampling import sample_batch

NAME = "self_consistency"


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



def answer(model, processor, batch: Batch, opts: Options) -> None:
    """Replace each greedy row's answer by the majority vote of `opts.samples` sampled chains (in place);
    rows get "tied", which run_stats counts and drops."""
    chains = sample_batch(model, processor, batch.examples, opts.samples, opts.temperature, 1.0, opts.max_new_tokens,
                          opts.seed, opts.min_new_tokens)
    for row, sampled, options in zip(batch.rows, chains, batch.choices, strict=True):
        texts = [kosmos2.clean_output(processor, c["text"]).strip() for c in sampled]
        parses = [extract_choice(t, options) for t in texts]
        choice, votes, tied = majority_vote(parses, len(options), row["choice_text"])
        first = next((i for i, p in enumerate(parses) if p == choice), 0) if choice is not None else 0
        row.update(raw=texts[first], choice=choice, choice_text=parses[first], votes=json.dumps(votes),
                   new_tokens=row["new_tokens"] + sum(c["new_tokens"] for c in sampled), tied=tied)


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



def run_stats(rows: list[dict], cfg) -> dict:
    """self_consistency_stats with the sampling settings; takes "tied" out of the rows (not a column)."""
    stats = {**self_consistency_stats(rows, cfg.samples), "temperature": cfg.temperature, "seed": cfg.seed}
    for row in rows:
        row.pop("tied", None)
    return stats
