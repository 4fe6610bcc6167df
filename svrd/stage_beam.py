"""infer.mode=stage_beam: LLaVA-CoT's stage-level beam search (Xu et al. 2024, sec. 3.3) for the student.

The rationale is written one tagged stage at a time, in STAGES order. At each stage
`infer.beam.candidates` continuations of the prefix (prompt + stages kept so far) are sampled
(temperature `infer.beam.temperature`, no top-k/top-p cut, one `generate()` per stage for the batch),
each stopping right after that stage's closing tag (spaces and case tolerated), at EOS, or when the
question's `infer.max_new_tokens` (all stages together, as generate mode) is spent. The judge keeps
one, which is appended; a kept candidate that never closed its tag (EOS, budget) ends the question.
When all of a question's candidates are the same tokens nobody is asked.

Judges (`infer.beam.judge`), each an object with `pick(choices) -> [index per choice]`:
  likelihood  the candidate with the highest mean per-token log-probability under the model, given
              the prompt and prefix (one forward pass per candidate slot, svrd.infer.score_continuations)
  self        LLaVA-CoT's way: a knockout (0 v 1, 2 v 3, ..., winners again; an odd one out goes on)
              where the model itself reads a judge prompt with both candidates, and the answer is
              whichever of the tokens "1" / "2" gets the higher next-token logit (no free text)
  openai      the same knockout and prompt, answered by an OpenAI-compatible chat server
Undecided comparisons (equal logits, an unreadable server answer) go to a candidate that closed
its tag over one that did not, else to the first.

The judge prompt follows LLaVA-CoT's inference/demo/simple_inference.py (a per-stage criterion,
the question, the two responses, "choose response 1 or 2"), reworded and reduced to a one-token
answer. Sampling is seeded per stage from `infer.seed` and the pids sampled together, so a fixed
seed and batch size give bit-identical rows on CPU.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from svrd.answers import extract_choice
from svrd.examples import Example, tokenizer_of
from svrd.infer import (
    _generated_ids,
    _position_ids,
    _stop_ids,
    _to_device,
    encode_batch,
    eos_ids,
    score_continuations,
)
from svrd.rationale import STAGES

JUDGES = ("likelihood", "self", "openai")
TAIL = 16  # tokens decoded at each step to spot a closing tag (spelled with spaces it takes several)

CRITERIA = {  # what makes one stage better than another (after LLaVA-CoT's judge prompts, reworded)
    "summary": "outlines how to approach the question, without yet doing the detailed reasoning",
    "caption": "describes what the image shows that matters for the question, accurately and in detail",
    "reasoning": "reasons correctly, step by step, from the question and the description towards the answer",
    "conclusion": "states the answer that follows from the reasoning, naming one of the options",
}


def closing_re(stage: str) -> re.Pattern:
    return re.compile(rf"<\s*/\s*{stage}\s*>", re.IGNORECASE)


@dataclass
class Choice:
    """One question's candidates at one stage, handed to the judge."""

    example: Example
    stage: str
    prefix: list[int]  # the tokens kept at earlier stages
    prefix_text: str
    candidates: list[list[int]]
    texts: list[str]  # decoded candidates (special tokens removed)
    closed: list[bool]  # whether each candidate wrote this stage's closing tag
    judged: int = 0  # judge calls spent (pairwise: comparisons; likelihood: candidates scored)
    judge_tokens: int = 0  # tokens the student ran through for judging (see beam_stats)
    scores: list[float] = field(default_factory=list)  # likelihood: each candidate's mean log-prob


def judge_prompt(choice: Choice, a: int, b: int) -> str:
    stage = choice.stage
    return (f"You are judging two candidate texts for the {stage.upper()} stage of an answer to a question. "
            f"A better {stage} {CRITERIA[stage]}.\n\n"
            f"Question: {choice.example.prompt}\n\n"
            f"Answer so far: {choice.prefix_text.strip() or '(nothing yet)'}\n\n"
            f"Response 1: {choice.texts[a].strip()}\n\n"
            f"Response 2: {choice.texts[b].strip()}\n\n"
            f"Which response is the better {stage}? Answer with 1 or 2 only.")


class PairwiseJudge:
    """A knockout over a question's candidates; subclasses answer `compare` for a list of pairs."""

    def compare(self, pairs: list[tuple[Choice, int, int]]) -> list[int | None]:  # 0: a, 1: b, None: undecided
        raise NotImplementedError

    def pick(self, choices: list[Choice]) -> list[int]:
        alive = [list(range(len(c.candidates))) for c in choices]
        while any(len(a) > 1 for a in alive):
            pairs = [(q, a[t], a[t + 1]) for q, a in enumerate(alive) for t in range(0, len(a) - 1, 2)]
            verdicts = self.compare([(choices[q], i, j) for q, i, j in pairs])
            winners: list[list[int]] = [[] for _ in choices]
            for (q, i, j), v in zip(pairs, verdicts, strict=True):
                c = choices[q]
                c.judged += 1
                if v is None:
                    v = 1 if c.closed[j] and not c.closed[i] else 0
                winners[q].append(j if v == 1 else i)
            alive = [w + ([a[-1]] if len(a) % 2 else []) for w, a in zip(winners, alive, strict=True)]
        return [a[0] for a in alive]


class LikelihoodJudge:
    def __init__(self, model, processor):
        self.model, self.processor = model, processor

    def pick(self, choices: list[Choice]) -> list[int]:
        tok = tokenizer_of(self.processor)
        filler = [eos_ids(self.model, tok)[0]]  # an empty candidate (EOS at once) is scored -inf
        inputs = _to_device(self.model, encode_batch(self.processor, [c.example for c in choices]))
        sums = score_continuations(self.model, self.processor, inputs, [c.prefix for c in choices],
                                   [[x or filler for x in c.candidates] for c in choices])
        picks = []
        for c, s in zip(choices, sums, strict=True):
            c.scores = [v / len(x) if x else float("-inf") for v, x in zip(s, c.candidates, strict=True)]
            c.judged += len(c.candidates)
            c.judge_tokens += sum(len(x) for x in c.candidates)
            picks.append(max(range(len(s)), key=lambda k: (c.scores[k], c.closed[k], -k)))
        return picks


class SelfJudge(PairwiseJudge):
    """The student compares two candidates: the logits of "1" and "2" right after the judge prompt."""

    def __init__(self, model, processor, chunk: int = 8):
        self.model, self.processor, self.chunk = model, processor, max(1, chunk)
        tok = tokenizer_of(processor)
        self.answer_ids = [self._ids(tok, d) for d in ("1", "2")]

    @staticmethod
    def _ids(tok, digit: str) -> list[int]:
        """The single tokens spelling the digit, with and without a leading space."""
        found = [enc[0] for s in (digit, " " + digit) if len(enc := tok(s, add_special_tokens=False)["input_ids"]) == 1]
        return sorted(set(found)) or tok(digit, add_special_tokens=False)["input_ids"][-1:]

    @torch.inference_mode()
    def compare(self, pairs):
        verdicts: list[int | None] = []
        for start in range(0, len(pairs), self.chunk):
            part = pairs[start:start + self.chunk]
            exs = [Example(c.example.pid, c.example.image, judge_prompt(c, i, j)) for c, i, j in part]
            inputs = _to_device(self.model, encode_batch(self.processor, exs))
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
            positions = _position_ids(self.model, ids, mask, extra)
            if positions is not None:
                extra["position_ids"] = positions
            logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=1, use_cache=False,
                                **extra).logits[:, -1].float()
            one, two = (logits[:, torch.tensor(a, device=logits.device)].max(-1).values for a in self.answer_ids)
            for (c, _, _), n, x, y in zip(part, mask.sum(-1).tolist(), one.tolist(), two.tolist(), strict=True):
                c.judge_tokens += int(n)
                verdicts.append(0 if x > y else 1 if y > x else None)
        return verdicts


def read_verdict(text: str) -> int | None:
    """0 or 1 from a written answer: the last "response N" it names, else its first standalone 1 or 2."""
    found = re.findall(r"response\s*([12])\b", text, re.IGNORECASE)[-1:] or re.findall(r"\b([12])\b", text)[:1]
    return int(found[0]) - 1 if found else None


class OpenAIJudge(PairwiseJudge):
    """An OpenAI-compatible chat server compares the pairs (temperature 0, a few tokens, read_verdict).
    Own client (svrd.teach's is async and pulls the whole teach package into infer's deps); the openai
    client retries timeouts, 408/409/429 and 5xx itself."""

    def __init__(self, cfg):
        import openai

        from svrd.errors import SvrdError

        if not cfg.base_url or not cfg.model:
            raise SvrdError("infer.beam.judge=openai needs infer.beam.openai.base_url and infer.beam.openai.model")
        key = os.environ.get(cfg.api_key_env or "") or "EMPTY"  # local servers need none; never logged
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=key, timeout=float(cfg.timeout_s),
                                    max_retries=int(cfg.max_retries))
        self.model, self.concurrency = str(cfg.model), int(cfg.concurrency)

    def _ask(self, pair: tuple[Choice, int, int]) -> int | None:
        import base64

        c, i, j = pair
        content: list[dict] = []
        if c.example.image:
            url = "data:image/png;base64," + base64.b64encode(c.example.image).decode("ascii")
            content.append({"type": "image_url", "image_url": {"url": url}})
        content.append({"type": "text", "text": judge_prompt(c, i, j)})
        resp = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": content}],
                                                   temperature=0.0, max_tokens=8)
        return read_verdict(resp.choices[0].message.content or "")

    def compare(self, pairs):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max(1, min(self.concurrency, len(pairs)))) as pool:
            return list(pool.map(self._ask, pairs))


def make_judge(beam, model, processor, chunk: int = 8):
    if beam.judge == "likelihood":
        return LikelihoodJudge(model, processor)
    if beam.judge == "self":
        return SelfJudge(model, processor, chunk)
    if beam.judge == "openai":
        return OpenAIJudge(beam.openai)
    raise ValueError(f"unknown infer.beam.judge {beam.judge!r}; expected one of {JUDGES}")


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
    inputs = _to_device(model, encode_batch(processor, examples))
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
    stops = _stop_ids(tok, eos)
    found: list[list[list[int]]] = [[] for _ in examples]
    for r, row in enumerate(out[:, width:]):  # num_return_sequences: each prompt's k rows are adjacent
        found[r // k].append(_generated_ids(row, stops)[:budgets[r // k]])
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
