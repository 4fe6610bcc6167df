"""Tiny random students of several VLM families, built offline and saved with `save_pretrained`.

Each builder trains a small byte-level BPE tokenizer on `texts` (svrd.tiny.train_tokenizer),
makes the family's processor (with a `*Pil` image processor: no torchvision) and a chat
template, builds the model from a config, and saves both to a folder, which then loads through
svrd.models.load_model / load_processor exactly like a Hub id. Nothing is downloaded.

Families:
  llava      LLaVA (CLIP vision tower + Llama), the project's own tiny student (svrd.tiny)
  idefics3   Idefics3 / SmolVLM (SigLIP-like vision + pixel-shuffle connector + Llama)
  paligemma  PaliGemma (SigLIP vision + Gemma; prefix-LM attention through token_type_ids)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from svrd.tiny import build_tiny_student, train_tokenizer

# Small enough that a few training steps of each family take about a second on one CPU core.
VOCAB = 400
TEXT_WIDTH = 64
TEXT_LAYERS = 2
HEADS = 2


def _llama_text_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=TEXT_WIDTH * 2,
        num_hidden_layers=TEXT_LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
        max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )


def _save(model, processor, tokenizer, out_dir: Path) -> dict:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return {"path": str(out_dir), "parameters": sum(p.numel() for p in model.parameters())}


def build_llava(out_dir: str | Path, texts: Iterable[str], seed: int = 0) -> dict:
    """The project's own tiny LLaVA student, smaller still (64 px images, 64 image tokens)."""
    info = build_tiny_student(out_dir, list(texts), vocab_size=VOCAB, image_size=64, patch_size=8, vision_width=32,
                              vision_layers=1, text_width=TEXT_WIDTH, text_layers=TEXT_LAYERS, heads=HEADS, seed=seed)
    return {"path": str(out_dir), **info}


# SmolVLM's template, reduced: "<|im_start|>User:<image>question<end_of_utterance>\nAssistant:"
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}"
    "{{ message['role'] | capitalize }}:"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def build_idefics3(out_dir: str | Path, texts: Iterable[str], image_size: int = 32, patch_size: int = 4,
                   scale_factor: int = 2, seed: int = 0) -> dict:
    """Idefics3 (SmolVLM's architecture): one global image, no splitting, (size/patch/scale)^2 image tokens."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tokenizer = train_tokenizer(texts, VOCAB)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<end_of_utterance>",
                                                                "<global-img>", "<|im_start|>"]})
    image_tokens = (image_size // patch_size // scale_factor) ** 2
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size},
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_tokens,
                                  chat_template=IDEFICS3_TEMPLATE)
    vision = Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=image_size, patch_size=patch_size)
    config = Idefics3Config(vision_config=vision, text_config=_llama_text_config(tokenizer),
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=scale_factor)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    return {**_save(model, processor, tokenizer, out_dir), "image_tokens": image_tokens}


# PaliGemma's processor puts BOS after the image tokens and "\n" after the prompt itself.
PALIGEMMA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{% endfor %}"
)


def build_paligemma(out_dir: str | Path, texts: Iterable[str], image_size: int = 32, patch_size: int = 8,
                    seed: int = 0) -> dict:
    """PaliGemma: SigLIP vision tower + Gemma; the prompt attends bidirectionally (token_type_ids 0)."""
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
    )
    from transformers.models.siglip.configuration_siglip import SiglipVisionConfig
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tokenizer = train_tokenizer(texts, VOCAB)
    image_tokens = (image_size // patch_size) ** 2
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = image_tokens
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   chat_template=PALIGEMMA_TEMPLATE)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=image_size, patch_size=patch_size, projection_dim=TEXT_WIDTH)
    text = GemmaConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=TEXT_WIDTH * 2,
        num_hidden_layers=TEXT_LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS, head_dim=TEXT_WIDTH // HEADS,
        max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
                             vocab_size=len(tokenizer), projection_dim=TEXT_WIDTH, hidden_size=TEXT_WIDTH)
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config)
    return {**_save(model, processor, tokenizer, out_dir), "image_tokens": image_tokens}


FAMILIES: dict[str, Callable[..., dict]] = {
    "llava": build_llava,
    "idefics3": build_idefics3,
    "paligemma": build_paligemma,
}


def fake_records(n: int = 6, seed: int = 0) -> list[dict]:
    """Small ScienceQA-shaped records with PNG images (pid, question, hint, choices, answer, image)."""
    import random

    from PIL import Image

    from svrd.images import png_bytes

    rng = random.Random(seed)
    colors = ["red", "green", "blue", "yellow"]
    rows = []
    for i in range(n):
        answer = rng.randrange(len(colors))
        rgb = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 30)][answer]
        img = Image.new("RGB", (40 + 4 * i, 32), rgb)  # sizes differ: the processors resize
        rows.append({
            "pid": str(1000 + i), "question": "Which color is the square?", "hint": "Look at the picture." if i % 2 else "",
            "choices": colors, "answer": answer, "image": png_bytes(img), "split": "train",
            "lecture": "Colors name the light an object reflects.", "solution": f"The square is {colors[answer]}.",
        })
    return rows


def fake_rationales(records: list[dict]) -> dict[str, dict]:
    return {
        r["pid"]: {"pid": r["pid"], "summary": "The question asks for the color.", "caption": "A colored square.",
                   "reasoning": r["solution"], "conclusion": "", "outcome": "agreed"}
        for r in records
    }


def corpus(records: list[dict]) -> list[str]:
    """Text for the tokenizers: prompts and targets of the fake records."""
    from svrd.examples import build_examples

    exs = build_examples(records, fake_rationales(records), "rationale", "letter_text")
    return [ex.prompt + "\n" + ex.target for ex in exs] * 4


def varied_sample_student(root: Path, per_family: int, max_rows: int | None = None) -> dict:
    """Sample questions and a tiny LLaVA whose weights are redrawn larger, so that (unlike an
    untrained model, which repeats one token) its greedy outputs differ from question to question.
    Saved to root/model; returns rows, model, processor and path."""
    import torch

    from svrd.filter import clean_record
    from svrd.models import load_model, load_processor
    from svrd.prompts import format_question
    from svrd.sample import generate
    from svrd.sources import iter_release
    from svrd.tiny import build_tiny_student

    generate(root / "release", per_family=per_family)
    rows = [clean_record(r, True, 25_000_000) for r in iter_release(root / "release")][:max_rows]
    build_tiny_student(root / "built", [format_question(r) for r in rows] + [r["solution"] for r in rows],
                       vocab_size=400, text_layers=2, init_std=0.02)  # untrained "built": near-uniform next tokens
    model, processor = load_model(str(root / "built")), load_processor(str(root / "built"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3 if "embed" in name else 0.08)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    model.eval()
    return {"root": root, "rows": rows, "model": model, "processor": processor, "path": root / "model"}
