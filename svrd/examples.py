"""From records to model inputs: prompts through the processor's chat template, targets, masking.

The prompt is encoded by the processor (which expands image tokens) and the target is
tokenized on its own and appended, so the boundary is exact: labels are -100 on every prompt
and image token and the loss falls on target tokens only. Inference encodes the same prompt.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import torch

from svrd.errors import SvrdError
from svrd.images import open_png
from svrd.prompts import format_question
from svrd.rationale import format_conclusion, format_rationale

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
TARGETS = ("rationale", "answer", "rationale_after", "mix")


@dataclass(frozen=True)
class Example:
    pid: str
    image: bytes | None
    prompt: str  # the question text the user turn carries
    target: str = ""


def messages_for(prompt: str, has_image: bool) -> list[dict]:
    content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


def _answer_only(conclusion: str) -> str:
    return f"<CONCLUSION> {conclusion} </CONCLUSION>"


def _use_answer_for_mix(pid: str, share: float, seed: int) -> bool:
    # Stable per pid (not Python's salted hash), so the same questions get the direct answer every run.
    digest = hashlib.sha256(f"{seed}:{pid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def build_target(problem: dict, rationale: dict | None, target: str, conclusion_style: str,
                 mix_share: float = 0.5, seed: int = 0) -> str:
    """The student's target text for one training question.

    The conclusion is rewritten into `conclusion_style` from the gold answer: rationale rows
    reaching distill either agreed with the gold answer or had it substituted (teach.on_disagree).
    """
    conclusion = format_conclusion(problem["answer"], problem["choices"], conclusion_style)
    if target == "mix":
        target = "answer" if _use_answer_for_mix(problem["pid"], mix_share, seed) else "rationale"
    if rationale is None or rationale.get("outcome") == "answer_only" or target == "answer":
        return _answer_only(conclusion)
    full = format_rationale(rationale["summary"], rationale["caption"], rationale["reasoning"], conclusion)
    if target == "rationale":
        return full
    if target == "rationale_after":
        stages = full.split("\n")
        return "\n".join([stages[-1]] + stages[:-1])
    raise ValueError(f"unknown train.target {target!r}")


def build_examples(problems: list[dict], rationales: dict[str, dict] | None, target: str = "rationale",
                   conclusion_style: str = "letter", mix_share: float = 0.5, seed: int = 0) -> list[Example]:
    """One example per problem that has a rationale (or every problem for the answer target)."""
    examples = []
    for rec in problems:
        rat = (rationales or {}).get(rec["pid"])
        if rat is None and target != "answer" and rationales is not None:
            continue  # dropped by the teacher (teach.on_disagree=drop)
        examples.append(
            Example(rec["pid"], rec.get("image"), format_question(rec),
                    build_target(rec, rat, target, conclusion_style, mix_share, seed))
        )
    return examples


def encode_prompt(processor, example: Example, return_tensors: str = "pt") -> dict:
    """Processor outputs for the prompt alone (batch of 1)."""
    text = processor.apply_chat_template(messages_for(example.prompt, example.image is not None),
                                         add_generation_prompt=True, tokenize=False)
    if example.image is not None:
        return processor(images=[open_png(example.image)], text=[text], return_tensors=return_tensors)
    return processor(text=[text], return_tensors=return_tensors)


def tokenizer_of(processor):
    return getattr(processor, "tokenizer", processor)


CONCLUSION_END = "</CONCLUSION>"
LENGTH_FIX = "raise train.max_length (null: the longest example's length) or lower student.image_tokens"


class LengthError(SvrdError, ValueError):
    """An example does not fit train.max_length without cutting its conclusion (one line, names the pid)."""


def target_ids_of(tok, target: str) -> list[int]:
    return tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def conclusion_end(tok, target: str) -> int:
    """Target tokens up to and including </CONCLUSION>: a cut may drop only what follows them."""
    at = target.find(CONCLUSION_END)
    if at < 0:
        return len(target_ids_of(tok, target))  # no conclusion tag: the whole target (and EOS) is needed
    return len(tok(target[: at + len(CONCLUSION_END)], add_special_tokens=False)["input_ids"])


def length_error(pid: str, prompt_len: int, target_len: int, max_length: int, over: int = 1, total: int = 1) -> LengthError:
    others = f"; {over} of {total} examples are over" if over > 1 else ""
    return LengthError(f"pid {pid}: needs {prompt_len + target_len} tokens (prompt with image tokens {prompt_len} "
                       f"+ target {target_len}), over train.max_length={max_length}, and the cut would reach its "
                       f"<CONCLUSION>{others}: {LENGTH_FIX}")


def encode_training(processor, example: Example, max_length: int | None) -> dict:
    """Prompt + target + EOS, with labels masked on the prompt and image tokens.

    Over max_length, only target tokens after </CONCLUSION> (the EOS, a trailing rationale) may be
    cut; a cut that would reach the conclusion raises LengthError (TrainingDataset checks every
    example up front, so this is a backstop)."""
    tok = tokenizer_of(processor)
    enc = encode_prompt(processor, example)
    prompt_ids = enc.pop("input_ids")[0]
    enc.pop("attention_mask", None)
    enc.pop("labels", None)  # PaliGemma's processor makes its own (we mask prompt and image ourselves)
    token_types = enc.pop("token_type_ids", None)
    target_ids = target_ids_of(tok, example.target)
    if max_length is not None and len(prompt_ids) + len(target_ids) > max_length:
        room = max_length - len(prompt_ids)
        if room < conclusion_end(tok, example.target):
            raise length_error(example.pid, len(prompt_ids), len(target_ids), max_length)
        target_ids = target_ids[:room]
    target_ids = torch.tensor(target_ids, dtype=torch.long)
    input_ids = torch.cat([prompt_ids, target_ids])
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), target_ids])
    out = {"input_ids": input_ids, "labels": labels}
    if token_types is not None and "token_type_ids" in getattr(processor, "model_input_names", ()):
        # The model reads them (PaliGemma: 0 = prefix, attended bidirectionally, as at inference).
        out["token_type_ids"] = torch.cat(
            [token_types[0], torch.full_like(target_ids, target_token_type(processor))])
    out.update(enc)  # pixel_values and family-specific image tensors, batch dim 1
    return out


# --- lengths, measured before training ------------------------------------------------------------


def image_size_of(png: bytes) -> tuple[int, int]:
    """(width, height) from the PNG header, without decoding the pixels."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return img.size


class PromptLengths:
    """Prompt lengths as the processor encodes them, without preprocessing every image.

    One real encode anchors the count; other prompts differ from it only in their text (counted by
    the tokenizer) and in their image's size (image tokens for that size, from the processor's own
    `_get_num_multimodal_tokens` where it has one, else one real encode of a blank image of that
    size, once per size). check_lengths re-encodes the longest example for real and, should the two
    differ, encodes every prompt.
    """

    def __init__(self, processor):
        self.processor = processor
        self.tok = tokenizer_of(processor)
        self._anchor: tuple[str, tuple[int, int], int] | None = None
        self._image_tokens: dict[tuple[int, int], int] = {}
        self._counter_works: bool | None = None

    def chat_text(self, example: Example) -> str:
        return self.processor.apply_chat_template(messages_for(example.prompt, example.image is not None),
                                                  add_generation_prompt=True, tokenize=False)

    def real(self, example: Example) -> int:
        return int(encode_prompt(self.processor, example)["input_ids"].shape[-1])

    def _text_len(self, text: str) -> int:
        return len(self.tok(text)["input_ids"])

    def _counted(self, size: tuple[int, int]) -> int | None:
        """The processor's own count for an image of `size`, or None where it has none."""
        counter = getattr(self.processor, "_get_num_multimodal_tokens", None)
        if counter is None or self._counter_works is False:
            return None
        try:
            count = int(counter(image_sizes=[(size[1], size[0])])["num_image_tokens"][0])
        except (NotImplementedError, TypeError, KeyError, AttributeError, ValueError, IndexError):
            count = None
        if count is None and self._counter_works:
            self._image_tokens.clear()  # one way for every size, so that the differences are consistent
        self._counter_works = count is not None
        return count

    def image_tokens(self, size: tuple[int, int]) -> int:
        """Tokens an image of `size` adds (relative to other sizes: only differences are used)."""
        if size not in self._image_tokens:
            count = self._counted(size)
            if count is None:  # one real encode of a blank image of that size
                from PIL import Image

                from svrd.images import png_bytes

                count = self.real(Example("size-probe", png_bytes(Image.new("RGB", size)), "x"))
            self._image_tokens[size] = count
        return self._image_tokens[size]

    def __call__(self, example: Example) -> int:
        if example.image is None:
            return self.real(example)  # no image to preprocess: the real encode is cheap
        text, size = self.chat_text(example), image_size_of(example.image)
        if self._anchor is None:
            self._anchor = (text, size, self.real(example))
            return self._anchor[2]
        anchor_text, anchor_size, anchor_len = self._anchor
        return (anchor_len + self._text_len(text) - self._text_len(anchor_text)
                + self.image_tokens(size) - self.image_tokens(anchor_size))


@dataclass(frozen=True)
class LengthCheck:
    lengths: list[int]  # prompt + target (+ EOS) per example, after any allowed cut
    max_length: int  # as applied (train.max_length, or the longest example when it is null)
    truncated: int  # targets that lost tokens after their </CONCLUSION>
    longest: int  # the longest example before any cut


def check_lengths(processor, examples: list[Example], max_length: int | None) -> LengthCheck:
    """Measure every example before training; stop with one line on the first that cannot fit.

    An example longer than max_length may lose only target tokens after its </CONCLUSION> (counted);
    otherwise LengthError names the pid, the length it needs and the params that fix it."""
    tok = tokenizer_of(processor)
    prompt_len = PromptLengths(processor)
    prompts = [prompt_len(ex) for ex in examples]
    targets = [len(target_ids_of(tok, ex.target)) for ex in examples]
    totals = [p + t for p, t in zip(prompts, targets, strict=True)]
    longest = max(totals, default=0)
    if examples and prompt_len.real(examples[totals.index(longest)]) != prompts[totals.index(longest)]:
        # the shortcut disagrees with the processor (a tokenizer that merges across the image
        # placeholder): encode every prompt for real instead
        log.warning("prompt lengths: the estimate differs from the processor's output; encoding every prompt")
        prompts = [prompt_len.real(ex) for ex in examples]
        totals = [p + t for p, t in zip(prompts, targets, strict=True)]
        longest = max(totals)
    limit = longest if max_length is None else max_length
    refused = [i for i, total in enumerate(totals)
               if total > limit and limit - prompts[i] < conclusion_end(tok, examples[i].target)]
    if refused:
        i = max(refused, key=lambda k: totals[k])
        raise length_error(examples[i].pid, prompts[i], targets[i], limit, len(refused), len(examples))
    return LengthCheck([min(total, limit) for total in totals], limit, sum(t > limit for t in totals), longest)


def target_token_type(processor) -> int:
    """The token type of the target's tokens where a family uses token_type_ids.

    PaliGemma marks the suffix (what is predicted, attended causally) with 1, as its processor
    does for `suffix=`; families that mark image tokens instead (Gemma3) give text 0.
    """
    return 1 if "PaliGemma" in type(processor).__name__ else 0


class TrainingDataset(torch.utils.data.Dataset):
    """Encodes lazily: only the current batch's images are decoded. Every example's length is
    checked against max_length when the dataset is made, before any training step."""

    def __init__(self, processor, examples: list[Example], max_length: int | None):
        self.processor = processor
        self.examples = examples
        self.check = check_lengths(processor, examples, max_length)
        self.max_length = self.check.max_length if examples else max_length
        self.truncated = self.check.truncated

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return encode_training(self.processor, self.examples[i], self.max_length)

    def lengths(self) -> list[int]:
        """Token lengths as measured by check_lengths (for length-grouped batching)."""
        return list(self.check.lengths)


def _stack_images(values: list[torch.Tensor]) -> torch.Tensor:
    # Families differ: LLaVA gives [1, C, H, W] per example, Qwen2-VL [patches, dim], Idefics3
    # [1, tiles, C, H, W]; concatenating along dim 0 is right for all when shapes agree.
    if all(v.shape[1:] == values[0].shape[1:] for v in values):
        return torch.cat(values, dim=0)
    # Idefics3 with different tile counts: pad the tile dimension with zeros.
    max_tiles = max(v.shape[1] for v in values)
    padded = []
    for v in values:
        pad = torch.zeros((v.shape[0], max_tiles - v.shape[1], *v.shape[2:]), dtype=v.dtype)
        padded.append(torch.cat([v, pad], dim=1))
    return torch.cat(padded, dim=0)


# Per-token sequences other than input_ids/labels: right-padded like them, not concatenated.
SEQUENCE_KEYS = {"token_type_ids": 1, "mm_token_type_ids": 0}  # key -> padding value


class Collator:
    """Right-pads input_ids/labels (and token types) for training; image tensors are concatenated."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        longest = max(len(f["input_ids"]) for f in features)
        batch = {
            "input_ids": torch.full((len(features), longest), self.pad_token_id, dtype=torch.long),
            "labels": torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long),
            "attention_mask": torch.zeros((len(features), longest), dtype=torch.long),
        }
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            batch["input_ids"][i, :n] = f["input_ids"]
            batch["labels"][i, :n] = f["labels"]
            batch["attention_mask"][i, :n] = 1
        for key, pad in SEQUENCE_KEYS.items():
            if key in features[0]:
                batch[key] = torch.full((len(features), longest), pad, dtype=torch.long)
                for i, f in enumerate(features):
                    batch[key][i, :len(f[key])] = f[key]
        # Keys of every example, not just the first (a text-only first example must not drop the
        # batch's image tensors / cached vision features).
        for key in dict.fromkeys(k for f in features for k in f):
            if key in ("input_ids", "labels") or key in SEQUENCE_KEYS:
                continue
            values = [f[key] for f in features if f.get(key) is not None]
            if values:
                batch[key] = _stack_images(values)
        return batch
