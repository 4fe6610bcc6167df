"""From records to model inputs: prompts through the processor's chat template, targets, masking.

The prompt is encoded by the processor (which expands image tokens) and the target is
tokenized on its own and appended, so the boundary is exact: labels are -100 on every prompt
and image token and the loss falls on target tokens only. Inference encodes the same prompt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from svrd.images import open_png
from svrd.prompts import format_question
from svrd.rationale import format_conclusion, format_rationale

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


def encode_training(processor, example: Example, max_length: int) -> dict:
    """Prompt + target + EOS, with labels masked on the prompt and image tokens."""
    tok = tokenizer_of(processor)
    enc = encode_prompt(processor, example)
    prompt_ids = enc.pop("input_ids")[0]
    enc.pop("attention_mask", None)
    enc.pop("labels", None)  # PaliGemma's processor makes its own (we mask prompt and image ourselves)
    token_types = enc.pop("token_type_ids", None)
    target_ids = tok(example.target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    room = max_length - len(prompt_ids)
    if room < 2:
        raise ValueError(f"pid {example.pid}: prompt alone is {len(prompt_ids)} tokens, over train.max_length={max_length}")
    target_ids = torch.tensor(target_ids[:room], dtype=torch.long)
    input_ids = torch.cat([prompt_ids, target_ids])
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), target_ids])
    out = {"input_ids": input_ids, "labels": labels}
    if token_types is not None and "token_type_ids" in getattr(processor, "model_input_names", ()):
        # The model reads them (PaliGemma: 0 = prefix, attended bidirectionally, as at inference).
        out["token_type_ids"] = torch.cat(
            [token_types[0], torch.full_like(target_ids, target_token_type(processor))])
    out.update(enc)  # pixel_values and family-specific image tensors, batch dim 1
    return out


def target_token_type(processor) -> int:
    """The token type of the target's tokens where a family uses token_type_ids.

    PaliGemma marks the suffix (what is predicted, attended causally) with 1, as its processor
    does for `suffix=`; families that mark image tokens instead (Gemma3) give text 0.
    """
    return 1 if "PaliGemma" in type(processor).__name__ else 0


class TrainingDataset(torch.utils.data.Dataset):
    """Encodes lazily: only the current batch's images are decoded."""

    def __init__(self, processor, examples: list[Example], max_length: int):
        self.processor = processor
        self.examples = examples
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return encode_training(self.processor, self.examples[i], self.max_length)

    def lengths(self) -> list[int]:
        """Token lengths without decoding images (for length-grouped batching)."""
        tok = tokenizer_of(self.processor)
        first = self[0] if self.examples else None
        prompt_overhead = 0
        if first is not None:
            ex = self.examples[0]
            prompt_overhead = len(first["input_ids"]) - len(tok(ex.prompt + ex.target)["input_ids"])
        return [len(tok(ex.prompt + ex.target)["input_ids"]) + prompt_overhead for ex in self.examples]


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
