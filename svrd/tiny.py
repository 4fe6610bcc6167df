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
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}\n"
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "</s>\n"
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
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
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
