"""The embedded default student: a tiny LLaVA-style VLM the project builds itself.

A byte-level BPE tokenizer is trained with `tokenizers` on the training text, a LLaVA model
(CLIP vision tower + Llama text model) is made from a config, and both are saved with
`save_pretrained`, so the student loads through `AutoModelForImageTextToText` /
`AutoProcessor` exactly as a Hub model does. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from svrd.io import atomic_dir

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<image>"]
# The stage tags become single (non-special) tokens: decoding keeps them, and a tiny model
# does not have to learn to spell them.
TAG_TOKENS = [f"<{t}>" for t in ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION")] + [
    f"</{t}>" for t in ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION")
]

# A LLaVA-1.5-like template over the processor's content list (image first, then text).
# transformers renders chat templates with trim_blocks, which eats a newline written right after a
# block tag: the user turn's closing newline is therefore an expression ({{ '\n' }}), or the last
# option would run into "ASSISTANT:" and tokenize differently from the same text in a target.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{{ '\n' }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{{ '\n' }}"
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "</s>{{ '\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.add_tokens(TAG_TOKENS)
    return fast


def build_tiny_student(
    out_dir: str | Path,
    texts: Iterable[str],
    vocab_size: int = 1200,
    image_size: int = 64,
    patch_size: int = 8,
    vision_width: int = 64,
    vision_layers: int = 2,
    text_width: int = 128,
    text_layers: int = 4,
    heads: int = 4,
    seed: int = 0,
    vision_feature_layer: int = -1,
    init_std: float = 0.1,
) -> dict:
    """Train the tokenizer on `texts`, build the model from a config, save both to `out_dir`."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = train_tokenizer(texts, vocab_size)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",  # drop CLS: one image token per patch
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=vision_width,
        intermediate_size=vision_width * 4,
        num_hidden_layers=vision_layers,
        num_attention_heads=max(1, vision_width // 32),
        projection_dim=vision_width,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_width,
        intermediate_size=text_width * 4,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        initializer_range=init_std,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=vision_feature_layer,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    return {"parameters": n_params, "vocab": len(tokenizer), "image_tokens": (image_size // patch_size) ** 2}


# --- the base student's alignment stage ------------------------------------------------------


TEXT_FIELDS = ("lecture", "solution", "caption", "hint")  # a record's text the tokenizer learns, beside its question


def training_text(rows: Iterable[dict]):
    """The text the tiny student's tokenizer is trained on: each row's question (as the student's
    prompt formats it) and its lecture, solution, caption and hint. Give it train and val rows only,
    so the test questions stay unseen, even by the tokenizer."""
    from svrd.prompts import format_question

    for row in rows:
        yield format_question(row)
        yield from (row[f] for f in TEXT_FIELDS if row[f])


def caption_examples(rows: list[dict], prompt: str) -> list:
    """image -> caption pairs: what a pre-trained VLM has learnt before it meets the task. No question,
    option, answer or rationale goes in; rows without an image or a caption are left out."""
    from svrd.examples import Example

    return [Example(r["pid"], r["image"], prompt, r["caption"].strip())
            for r in rows if r.get("image") and (r.get("caption") or "").strip()]


def pretrain_config(p, seed: int):
    """tiny.pretrain as the training loop (svrd.distill.train) reads a train section: AdamW, a linear
    schedule, `tiny.pretrain.precision`, every weight trainable, batches as `tiny.pretrain.group_by_length` says,
    data loader workers as train.data_workers' auto."""
    from types import SimpleNamespace

    return SimpleNamespace(
        optimizer="adamw", lr=p.lr, epochs=p.epochs, batch_size=p.batch_size, grad_accum=1,
        warmup_steps=p.warmup_steps, schedule="linear", weight_decay=0.0, max_length=p.max_length,
        group_by_length=p.group_by_length, precision=p.precision, gradient_checkpointing=False, save_steps=p.save_steps, seed=seed,
        data_workers="auto",
    )


def pretrain_captions(model_dir: str | Path, train_examples: list, val_examples: list, p, seed: int,
                      checkpoint_dir: str | Path, live=None) -> dict:
    """Pre-train the saved tiny student in `model_dir` on image -> caption examples (`caption_examples`;
    LLaVA's first, alignment stage; here the vision tower, projector and text model all train, as
    nothing pre-trained exists offline), through the Trainer path distill uses, and save it back in place.

    This gives distill what the paper's student had: a base that sees (its vision features mean
    something before the tower is frozen) but was never taught the questions."""
    from svrd.distill import train
    from svrd.errors import SvrdError
    from svrd.models import load_model, load_processor

    if not train_examples:
        raise SvrdError("tiny.pretrain.data is 'caption' but no training row has an image and a caption")
    model = load_model(str(model_dir))
    processor = load_processor(str(model_dir))
    stats = train(model, processor, train_examples, val_examples, pretrain_config(p, seed), str(checkpoint_dir), live)
    with atomic_dir(model_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return stats
