"""Tiny random teachers of real architectures, built offline and saved with save_pretrained.

They load through AutoProcessor / AutoModelForImageTextToText exactly as a Hub id does, so the
hf backend's real loading, chat-template and batched generate path is exercised on CPU.
Random weights write garbage: tests check rows, provenance and the on_disagree handling.

- build_tiny_llava: LLaVA (CLIP vision tower + Llama), via the project's own tiny builder.
- build_tiny_mllama: Mllama, the architecture of LLaVA-CoT (Xkev/Llama-3.2V-11B-cot):
  cross-attention layers, tiled images, MllamaImageProcessorPil (no torchvision needed).
"""

from __future__ import annotations

from pathlib import Path

TEXTS = [
    "Which option fits the picture? Lecture and solution about magnets that attract or repel.",
    "<SUMMARY> The question asks about the image. </SUMMARY> <CAPTION> A picture. </CAPTION>",
    "<REASONING> Compare the options. </REASONING> <CONCLUSION> A </CONCLUSION> B C D E",
    "Correct answer: (B) repel. Background lecture. Reference solution. Options: (A) (B) (C)",
]

# Llama-3.2-Vision's template shape: the image token, then the text, in a header-delimited turn.
MLLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image|>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def build_tiny_llava(out_dir: str | Path) -> Path:
    from svrd.tiny import build_tiny_student

    build_tiny_student(out_dir, TEXTS * 4, vocab_size=400, image_size=16, patch_size=8, vision_width=32,
                       vision_layers=1, text_width=32, text_layers=1, heads=2)
    return Path(out_dir)


def build_tiny_mllama(out_dir: str | Path, image_size: int = 16) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.mllama.configuration_mllama import MllamaTextConfig, MllamaVisionConfig
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    specials = ["<|finetune_right_pad_id|>", "<|begin_of_text|>", "<|eot_id|>", "<|image|>",
                "<|start_header_id|>", "<|end_header_id|>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 4, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessorPil(size={"height": image_size, "width": image_size}, max_image_tiles=1),
        tokenizer=tokenizer,
        chat_template=MLLAMA_CHAT_TEMPLATE,
    )
    hidden = 32
    vision = MllamaVisionConfig(
        hidden_size=hidden, num_hidden_layers=2, num_global_layers=1, attention_heads=2, intermediate_size=64,
        vision_output_dim=hidden * 2, image_size=image_size, patch_size=8, max_num_tiles=1,
        intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1]],
    )
    text = MllamaTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, cross_attention_layers=[1], max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config = MllamaConfig(vision_config=vision, text_config=text,
                          image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"))
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
