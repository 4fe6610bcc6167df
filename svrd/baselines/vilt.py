"""ViLT (the paper's 113M baseline) answers a ScienceQA question by choosing among its options.

ViLT for VQA (`ViltForQuestionAnswering`, e.g. dandelin/vilt-b32-finetuned-vqa) is a classifier
over a fixed answer vocabulary (`config.id2label`, VQAv2's 3,129 answers), not a generator. Each
option is mapped onto that vocabulary, most exact first:
1. the option's normalized text (svrd.answers.normalize) is a label ("Yes" -> "yes");
2. otherwise its best match: the labels with the highest word-overlap F1 with the option
   (articles left out), if that F1 is at least MIN_MATCH_F1 ("New Hampshire colony" -> "new
   hampshire"; "a magnet" -> "magnet"). Labels tied for the best match all count.
An option's score is the highest logit among its labels, and the best-scoring option is chosen.
Options that map to nothing cannot be chosen; when no option maps, or the best score is tied
between options (two options mapping to one label), the answer is None: never a guess.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from svrd.answers import normalize

MIN_MATCH_F1 = 0.5  # below this an option shares too few words with any label to count as it
ARTICLES = frozenset({"a", "an", "the"})


def _content_words(text: str) -> tuple[str, ...]:
    return tuple(w for w in text.split() if w not in ARTICLES)


def _words_f1(a: list[str], b: list[str]) -> float:
    overlap = sum((Counter(a) & Counter(b)).values())
    if not overlap:
        return 0.0
    p, r = overlap / len(a), overlap / len(b)
    return 2 * p * r / (p + r)


@dataclass(frozen=True)
class LabelIndex:
    """The model's answer vocabulary, normalized once: text -> label ids, and each label's words."""

    by_text: dict[str, tuple[int, ...]]
    words: tuple[tuple[int, tuple[str, ...]], ...]

    @classmethod
    def from_id2label(cls, id2label: Mapping[int | str, str]) -> LabelIndex:
        by_text: dict[str, list[int]] = {}
        words = []
        for raw_id, label in id2label.items():
            text = normalize(str(label))
            if not text:
                continue
            by_text.setdefault(text, []).append(int(raw_id))
            words.append((int(raw_id), _content_words(text)))
        return cls({k: tuple(v) for k, v in by_text.items()}, tuple(words))

    def labels_for(self, option: str) -> tuple[int, ...]:
        """The label ids an option maps to (exact text first, else its best word-overlap match)."""
        text = normalize(option)
        if not text:
            return ()
        if text in self.by_text:
            return self.by_text[text]
        option_words = list(_content_words(text))
        scored = [(_words_f1(option_words, list(w)), i) for i, w in self.words if w and option_words]
        best = max((f for f, _ in scored), default=0.0)
        if best < MIN_MATCH_F1:
            return ()
        return tuple(i for f, i in scored if f == best)


def choose_option(logits: Sequence[float], choices: Sequence[str], index: LabelIndex) -> int | None:
    """The option whose mapped labels score highest in `logits` (one question), or None."""
    scores = []
    for option in choices:
        labels = index.labels_for(option)
        scores.append(max(float(logits[i]) for i in labels) if labels else None)
    mapped = [s for s in scores if s is not None]
    if not mapped:
        return None
    best = max(mapped)
    winners = [i for i, s in enumerate(scores) if s == best]
    return winners[0] if len(winners) == 1 else None


class ViltAnswerer:
    """Batched option choice with a ViltForQuestionAnswering and its ViltProcessor."""

    def __init__(self, model, processor):
        self.model = model.eval()
        self.processor = processor
        self.index = LabelIndex.from_id2label(model.config.id2label)

    def logits(self, images: Sequence, questions: Sequence[str]):
        import torch

        inputs = self.processor(images=list(images), text=list(questions), return_tensors="pt",
                                padding=True, truncation=True)
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        with torch.inference_mode():
            return self.model(**inputs).logits.float().cpu()

    def answer(self, images: Sequence, questions: Sequence[str], choices: Sequence[Sequence[str]]) -> list[int | None]:
        """One option index (or None) per question; the model never sees the options."""
        logits = self.logits(images, questions)
        return [choose_option(row.tolist(), opts, self.index) for row, opts in zip(logits, choices, strict=True)]
