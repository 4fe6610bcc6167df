"""infer.mode=stage_beam: LLaVA-CoT's stage-level beam search (Xu et al. 2024, sec. 3.3) for the student.

The rationale is written one tagged stage at a time, in STAGES order. At each stage
`infer.beam.candidates` continuations of the prefix (prompt + stages kept so far) are sampled
(temperature `infer.beam.temperature`, no top-k/top-p cut, one `generate()` per stage for the batch),
each stopping right after that stage's closing tag (spaces and case tolerated), at EOS, or when the
question's `infer.max_new_tokens` (all stages together, as generate mode) is spent. The judge
(`infer.beam.judge`, svrd.infer.beam_judges) keeps one, which is appended; a kept candidate that
never closed its tag (EOS, budget) ends the question. When all of a question's candidates are the
same tokens nobody is asked.

`raw` is the kept stages, parsed as in generate mode. The greedy output still runs, as the cost
baseline only: `new_tokens` counts it and every candidate sampled; `beam_generated` /
`beam_judged` count candidates and judge calls, the metrics `cost_vs_greedy`. Sampling is seeded
per stage from `infer.seed` and the pids sampled together, so a fixed seed and batch size give
bit-identical rows on CPU.
"""

from __future__ import annotations

import hashlib
import re

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from svrd.answers import extract_choice
from svrd.examples import Example, tokenizer_of
from svrd.infer.beam_judges import Choice, make_judge
from svrd.infer.encoding import encode_batch, to_device
from svrd.infer.generate import Batch, Options
from svrd.infer.generation import eos_ids, generated_ids, stop_ids
from svrd.rationale import STAGES

NAME = "stage_beam"


TAIL = 16  # tokens decoded at each step to spot a closing tag (spelled with spaces it takes several)


def closing_re(stage: str) -> re.Pattern:
    return re.compile(rf"<\s*/\s*{stage}\s*>", re.IGNORECASE)


def _seed(seed: int, pids: list[str], stage: str) -> int:
    digest = hashlib.sha256(f"{seed}:{stage}:{','.join(pids)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63)


class _StageStop(StoppingCriteria):
    """Per row: done once the new tokens close `stage` or reach the row's budget."""

    def __init__(self, tok, stage: str, width: int, budgets: list[int]):
        self.tok, self.pattern, self.width, self.budgets = tok, closing_re(stage), width, budgets

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        new = input_ids[:, self.width:]
        done = [new.shape[1] >= b or bool(self.pattern.search(self.tok.decode(row[-TAIL:].tolist())))
                for row, b in zip(new, self.budgets, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def sample_stage(model, processor, examples: list[Example], prefixes: list[list[int]], stage: str, k: int,
                 temperature: float, budgets: list[int], seed: int) -> list[list[list[int]]]:
    """`k` sampled continuations of each example's prompt + prefix, each cut after `stage`'s
    closing tag, at EOS or at its budget (its tokens, EOS and padding removed; other special tokens
    are never sampled)."""
    tok = tokenizer_of(processor)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    inputs = to_device(model, encode_batch(processor, examples))
    prompts = [row[m.bool()].tolist() for row, m in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)]
    seqs = [p + q for p, q in zip(prompts, prefixes, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):  # left-padded again, prefix appended
        ids[i, width - len(s):], mask[i, width - len(s):] = torch.tensor(s, dtype=torch.long), 1
    extra = {key: v for key, v in inputs.items() if key not in ("input_ids", "attention_mask", "token_type_ids")}
    eos = eos_ids(model, tok)
    # No special token but EOS: an image placeholder inside a kept stage would break the next stage's input.
    suppress = sorted(set(tok.all_special_ids) - set(eos))
    stop = _StageStop(tok, stage, width, [b for b in budgets for _ in range(k)])
    torch.manual_seed(_seed(seed, [ex.pid for ex in examples], stage))
    out = model.generate(
        input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **extra, do_sample=True,
        temperature=temperature, top_k=0, top_p=1.0, num_return_sequences=k, max_new_tokens=max(budgets),
        num_beams=1, stopping_criteria=StoppingCriteriaList([stop]), pad_token_id=tok.pad_token_id, eos_token_id=eos,
        suppress_tokens=suppress or None,
    )
    stops = stop_ids(tok, eos)
    found: list[list[list[int]]] = [[] for _ in examples]
    for r, row in enumerate(out[:, width:]):  # num_return_sequences: each prompt's k rows are adjacent
        found[r // k].append(generated_ids(row, stops)[:budgets[r // k]])
    return found


def search(model, processor, examples: list[Example], max_new_tokens: int, candidates: int, temperature: float,
           seed: int, judge) -> list[dict]:
    """Stage-level beam search over a batch. Per example: "text" (the kept stages, decoded and
    stripped as generate mode's raw), "picked" (each stage's kept candidate text), "generated"
    (candidates sampled), "sampled_tokens", "judged" and "judge_tokens"."""
    tok = tokenizer_of(processor)
    n = len(examples)
    kept: list[list[int]] = [[] for _ in range(n)]
    going = [True] * n
    res = [{"picked": [], "generated": 0, "sampled_tokens": 0, "judged": 0, "judge_tokens": 0} for _ in range(n)]
    for stage in STAGES:
        live = [i for i in range(n) if going[i] and len(kept[i]) < max_new_tokens]
        if not live:
            break
        found = sample_stage(model, processor, [examples[i] for i in live], [kept[i] for i in live], stage,
                             candidates, temperature, [max_new_tokens - len(kept[i]) for i in live], seed)
        choices = []
        for i, cands in zip(live, found, strict=True):
            texts = [tok.decode(c, skip_special_tokens=True) for c in cands]
            choices.append(Choice(examples[i], stage, list(kept[i]), tok.decode(kept[i], skip_special_tokens=True),
                                  cands, texts, [bool(closing_re(stage).search(t)) for t in texts]))
        contested = [c for c in choices if len({tuple(x) for x in c.candidates}) > 1]
        picks = dict(zip(map(id, contested), judge.pick(contested) if contested else [], strict=True))
        for i, c in zip(live, choices, strict=True):
            best = picks.get(id(c), 0)
            if not 0 <= best < len(c.candidates):
                raise ValueError(f"the judge picked candidate {best} of {len(c.candidates)}")
            kept[i] += c.candidates[best]
            going[i] = c.closed[best]
            r = res[i]
            r["picked"].append(c.texts[best])
            r["generated"] += len(c.candidates)
            r["sampled_tokens"] += sum(len(x) for x in c.candidates)
            r["judged"] += c.judged
            r["judge_tokens"] += c.judge_tokens
    for r, ids in zip(res, kept, strict=True):
        r["text"] = tok.decode(ids, skip_special_tokens=True).strip()
    return res


def stage_beam_rows(model, processor, examples: list[Example], choices: list[list[str]], rows: list[dict],
                    max_new_tokens: int, beam, seed: int) -> None:
    """Replace each greedy row's answer by the stage beam search's (in place). The greedy output is
    kept only as the cost baseline ("greedy_tokens", taken out by beam_stats)."""
    judge = make_judge(beam, model, processor, chunk=len(examples))
    found = search(model, processor, examples, max_new_tokens, beam.candidates, beam.temperature, seed, judge)
    for row, r, opts in zip(rows, found, choices, strict=True):
        picked = extract_choice(r["text"], opts)
        row.update(raw=r["text"], choice=picked, choice_text=picked, new_tokens=row["new_tokens"] + r["sampled_tokens"],
                   beam_generated=r["generated"], beam_judged=r["judged"], greedy_tokens=row["new_tokens"],
                   judge_tokens=r["judge_tokens"])



def answer(model, processor, batch: Batch, opts: Options) -> None:
    stage_beam_rows(model, processor, batch.examples, batch.choices, batch.rows, opts.max_new_tokens, opts.beam,
                    opts.seed)


def beam_stats(rows: list[dict], beam) -> dict:
    """Totals for the metrics; takes the rows' "greedy_tokens" and "judge_tokens" out (no columns).

    cost_vs_greedy = (candidate tokens sampled, all stages and candidates + judge tokens) / tokens
    the greedy output of the same questions generated (run alongside, as in every mode). Judge
    tokens: likelihood, the candidate tokens scored; self, every token of each judge prompt (image
    included) plus none generated; openai, 0 (another machine's work). Not counted on either side:
    re-reading the prompt and kept prefix at each stage (no KV cache is kept between stages).
    sampled_vs_greedy leaves the judge out."""
    greedy = sum(r.pop("greedy_tokens") for r in rows)
    judge = sum(r.pop("judge_tokens") for r in rows)
    sampled = sum(r["new_tokens"] for r in rows) - greedy
    return {"candidates": beam.candidates, "judge": beam.judge, "temperature": beam.temperature,
            "beam_generated": sum(r["beam_generated"] for r in rows), "beam_judged": sum(r["beam_judged"] for r in rows),
            "greedy_tokens": greedy, "sampled_tokens": sampled, "judge_tokens": judge,
            "cost_vs_greedy": round((sampled + judge) / greedy, 3) if greedy else None,
            "sampled_vs_greedy": round(sampled / greedy, 3) if greedy else None}



def run_stats(rows: list[dict], cfg) -> dict:
    return {**beam_stats(rows, cfg.beam), "seed": cfg.seed}
