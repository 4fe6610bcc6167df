"""infer.mode=likelihood: the model still writes its own greedy rationale (the same output as in
`generate`), then the answer is the option whose conclusion the model finds most probable right
after the `<CONCLUSION>` tag.

The rationale prefix is the greedy output up to and including its first `<CONCLUSION>` opening
tag; when the model never writes one (an answer-only output without tags, or an output cut off by
`max_new_tokens`), "<CONCLUSION>" is appended after everything it wrote (EOS removed). Each
option's continuation is scored by the sum of its token log-probabilities: `letter` " A" (the
letter's tokens only), `letter_text` " A. attract </CONCLUSION>", `text` " attract </CONCLUSION>"
(with the closing tag, so an option that is a prefix of another, "red" and "red and blue", is not
favoured). The answer can never be unparseable. `choice_text` keeps what the written conclusion
said, so the score stage can count right reasoning with a wrong written conclusion.
"""

from __future__ import annotations

from svrd.examples import tokenizer_of
from svrd.infer.generate import Batch, Options
from svrd.infer.logprobs import score_continuations
from svrd.rationale import TAG_RE
from svrd.records import LETTERS

NAME = "likelihood"
LIKELIHOOD_ANSWERS = ("letter", "letter_text", "text")
CONCLUSION_TAG = "<CONCLUSION>"
CLOSING_TAG = "</CONCLUSION>"


def _opens_conclusion(text: str) -> bool:
    return any(m.group(1) == "" and m.group(2).lower() == "conclusion" for m in TAG_RE.finditer(text))


def rationale_prefix(tok, generated: list[int]) -> list[int]:
    """The generated tokens up to and including the first <CONCLUSION> opening tag; when there is
    none, all of them followed by the tokens of "<CONCLUSION>"."""
    def has_tag(k: int) -> bool:
        return _opens_conclusion(tok.decode(generated[:k], skip_special_tokens=False))

    if not generated or not has_tag(len(generated)):
        return list(generated) + tok(CONCLUSION_TAG, add_special_tokens=False)["input_ids"]
    lo, hi = 1, len(generated)  # the shortest prefix whose text opens the conclusion
    while lo < hi:
        mid = (lo + hi) // 2
        if has_tag(mid):
            hi = mid
        else:
            lo = mid + 1
    return list(generated[:lo])


def option_continuation(index: int, choices: list[str], style: str) -> str:
    """What follows "<CONCLUSION>" when the conclusion picks option `index`."""
    letter, text = LETTERS[index], " ".join(str(choices[index]).split())
    if style == "letter":
        return f" {letter}"
    if style == "letter_text":
        return f" {letter}. {text} {CLOSING_TAG}"
    if style == "text":
        return f" {text} {CLOSING_TAG}"
    raise ValueError(f"unknown infer.likelihood_answer {style!r}; expected one of {LIKELIHOOD_ANSWERS}")


def continuation_ids(tok, continuation: str) -> list[int]:
    """Tokens of `continuation` as they follow the tag (tokenized together with it when the tag's
    own tokens come out unchanged, so a leading space merges as it would in running text)."""
    tag = tok(CONCLUSION_TAG, add_special_tokens=False)["input_ids"]
    both = tok(CONCLUSION_TAG + continuation, add_special_tokens=False)["input_ids"]
    if both[:len(tag)] == tag and len(both) > len(tag):
        return both[len(tag):]
    return tok(continuation, add_special_tokens=False)["input_ids"]



def answer(model, processor, batch: Batch, opts: Options) -> None:
    """Each row's answer: the most probable option after its rationale prefix (ties: the first option)."""
    tok = tokenizer_of(processor)
    prefixes = [rationale_prefix(tok, g) for g in batch.generated]
    conts = [[continuation_ids(tok, option_continuation(k, options, opts.likelihood_answer)) for k in range(len(options))]
             for options in batch.choices]
    scores = score_continuations(model, processor, batch.inputs, prefixes, conts)
    for row, s in zip(batch.rows, scores, strict=True):
        row["option_logprobs"] = [round(x, 6) for x in s]
        row["choice"] = max(range(len(s)), key=lambda k: (s[k], -k))  # ties: the first option


def run_stats(rows: list[dict], cfg) -> dict:
    """The written conclusion against the likelihood answer (never unparseable itself)."""
    return {"text_unparseable": sum(r["choice_text"] is None for r in rows),
            "text_differs": sum(r["choice_text"] != r["choice"] for r in rows)}
