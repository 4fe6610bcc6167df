"""The stage beam's judges (infer.mode=stage_beam, svrd.infer.stage_beam): each an object with
`pick(choices) -> [index per choice]`.

  likelihood  the candidate with the highest mean per-token log-probability under the model, given
              the prompt and prefix (one forward pass per candidate slot, svrd.infer.logprobs.score_continuations)
  self        LLaVA-CoT's way: a knockout (0 v 1, 2 v 3, ..., winners again; an odd one out goes on)
              where the model itself reads a judge prompt with both candidates, and the answer is
              whichever of the tokens "1" / "2" gets the higher next-token logit (no free text)
  openai      the same knockout and prompt, answered by an OpenAI-compatible chat server
Undecided comparisons (equal logits, an unreadable server answer) go to a candidate that closed
its tag over one that did not, else to the first.

The judge prompt follows LLaVA-CoT's inference/demo/simple_inference.py (a per-stage criterion,
the question, the two responses, "choose response 1 or 2"), reworded and reduced to a one-token
answer.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

from svrd.examples import Example, tokenizer_of
from svrd.infer.encoding import encode_batch, to_device
from svrd.infer.generation import eos_ids
from svrd.infer.logprobs import position_ids, score_continuations

JUDGES = ("likelihood", "self", "openai")


CRITERIA = {  # what makes one stage better than another (after LLaVA-CoT's judge prompts, reworded)
    "summary": "outlines how to approach the question, without yet doing the detailed reasoning",
    "caption": "describes what the image shows that matters for the question, accurately and in detail",
    "reasoning": "reasons correctly, step by step, from the question and the description towards the answer",
    "conclusion": "states the answer that follows from the reasoning, naming one of the options",
}


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
        inputs = to_device(self.model, encode_batch(self.processor, [c.example for c in choices]))
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
            inputs = to_device(self.model, encode_batch(self.processor, exs))
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
            positions = position_ids(self.model, ids, mask, extra)
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
