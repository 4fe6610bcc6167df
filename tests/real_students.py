"""Students at the real shapes of the families the README names, narrow enough for a CPU.

The image side of each family is as published: its image processor settings, patch size, image
size and token counts, copied below from the published config.json / preprocessor_config.json /
processor_config.json (the file each value comes from is named beside it). The layers are narrow
and random, and the tokenizer is a small BPE trained here with the family's special tokens, so
nothing is downloaded. Each builder saves a folder that loads through svrd.models like a Hub id.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tiny_models import IDEFICS3_TEMPLATE, PALIGEMMA_TEMPLATE

from svrd.tiny import CHAT_TEMPLATE, train_tokenizer

VOCAB = 400
NARROW = {"vision_width": 32, "text_width": 64, "text_layers": 2, "heads": 2}

# HuggingFaceTB/SmolVLM-256M-Instruct (an Idefics3 model)
SMOLVLM_256M = {
    "patch_size": 16,  # config.json vision_config.patch_size (SigLIP base patch16/512)
    "image_size": 512,  # config.json vision_config.image_size: the encoder's native tile
    "scale_factor": 4,  # config.json scale_factor (pixel shuffle)
    "image_seq_len": 64,  # processor_config.json: (512 / 16 / 4)^2 tokens per tile
    "longest_edge": 2048,  # preprocessor_config.json size.longest_edge
    "max_image_size": 512,  # preprocessor_config.json max_image_size.longest_edge (tile side)
    "do_image_splitting": True,  # preprocessor_config.json
    "resample": 1,  # preprocessor_config.json (PIL LANCZOS)
    "mean_std": [0.5, 0.5, 0.5],  # preprocessor_config.json image_mean / image_std
    "max_position_embeddings": 8192,  # config.json text_config (SmolLM2-135M)
}
# llava-hf/llava-1.5-7b-hf (CLIP ViT-L/14 at 336 px + Llama-2)
LLAVA_15 = {
    "patch_size": 14,  # config.json vision_config.patch_size
    "image_size": 336,  # config.json vision_config.image_size; preprocessor_config.json crop_size 336x336
    "image_tokens": 576,  # (336 / 14)^2, CLS dropped (vision_feature_select_strategy "default")
    "vision_feature_layer": -2,  # config.json
    "image_mean": [0.48145466, 0.4578275, 0.40821073],  # preprocessor_config.json (CLIP)
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "max_position_embeddings": 4096,  # config.json text_config (Llama-2)
}
# google/paligemma-3b-pt-224 (SigLIP so400m/14 at 224 px + Gemma)
PALIGEMMA_224 = {
    "patch_size": 14,  # config.json vision_config.patch_size
    "image_size": 224,  # config.json vision_config.image_size; preprocessor_config.json size 224x224
    "image_tokens": 256,  # preprocessor_config.json image_seq_length = (224 / 14)^2
    "mean_std": [0.5, 0.5, 0.5],  # preprocessor_config.json
    "max_position_embeddings": 8192,  # config.json text_config (Gemma-2B)
}

# Tokens the published SmolVLM tokenizer has as single (added) tokens: the Idefics3 processor writes
# <row_i_col_j> before each tile, so a tokenizer without them would count prompts wrong.
SMOLVLM_SPECIAL = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<|im_start|>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]


def _llama(tokenizer, max_positions: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=NARROW["text_width"], intermediate_size=NARROW["text_width"] * 2,
        num_hidden_layers=NARROW["text_layers"], num_attention_heads=NARROW["heads"],
        num_key_value_heads=NARROW["heads"], max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )


def _save(model, processor, tokenizer, out_dir, image_tokens_native: int, native_side: int) -> dict:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return {"path": str(out_dir), "native_side": native_side, "image_tokens_640x480": image_tokens_native,
            "parameters": sum(p.numel() for p in model.parameters())}


def smolvlm_processor(tokenizer, cfg: dict = SMOLVLM_256M, template: str = IDEFICS3_TEMPLATE):
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=cfg["do_image_splitting"], size={"longest_edge": cfg["longest_edge"]},
        max_image_size={"longest_edge": cfg["max_image_size"]}, resample=cfg["resample"],
        image_mean=cfg["mean_std"], image_std=cfg["mean_std"])
    return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=cfg["image_seq_len"],
                             chat_template=template)


def build_smolvlm_256m(out_dir: str | Path, texts: Iterable[str], seed: int = 0) -> dict:
    """SmolVLM-256M's image path (4x3 tiles of 512 px + a global view for a 4:3 image: 13 x 64 = 832 tokens)."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    cfg = SMOLVLM_256M
    tokenizer = train_tokenizer(texts, VOCAB)
    tokenizer.add_special_tokens({"additional_special_tokens": SMOLVLM_SPECIAL})
    processor = smolvlm_processor(tokenizer)
    vision = Idefics3VisionConfig(hidden_size=NARROW["vision_width"], intermediate_size=NARROW["vision_width"] * 2,
                                  num_hidden_layers=1, num_attention_heads=2, image_size=cfg["image_size"],
                                  patch_size=cfg["patch_size"])
    config = Idefics3Config(vision_config=vision, text_config=_llama(tokenizer, cfg["max_position_embeddings"]),
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=cfg["scale_factor"])
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    return _save(model, processor, tokenizer, out_dir, 13 * cfg["image_seq_len"], cfg["image_size"])


def build_llava_15(out_dir: str | Path, texts: Iterable[str], seed: int = 0) -> dict:
    """LLaVA-1.5's image path: resize the short side to 336, center-crop 336x336, 576 tokens."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    cfg = LLAVA_15
    tokenizer = train_tokenizer(texts, VOCAB)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": cfg["image_size"]}, crop_size={"height": cfg["image_size"], "width": cfg["image_size"]},
        image_mean=cfg["image_mean"], image_std=cfg["image_std"])
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=cfg["patch_size"],
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    vision = CLIPVisionConfig(image_size=cfg["image_size"], patch_size=cfg["patch_size"],
                              hidden_size=NARROW["vision_width"], intermediate_size=NARROW["vision_width"] * 2,
                              num_hidden_layers=2, num_attention_heads=2, projection_dim=NARROW["vision_width"])
    config = LlavaConfig(vision_config=vision, text_config=_llama(tokenizer, cfg["max_position_embeddings"]),
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=cfg["vision_feature_layer"])
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    return _save(model, processor, tokenizer, out_dir, cfg["image_tokens"], cfg["image_size"])


def build_paligemma_224(out_dir: str | Path, texts: Iterable[str], seed: int = 0) -> dict:
    """PaliGemma-3B-224's image path: 224x224, 256 tokens."""
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
    )
    from transformers.models.siglip.configuration_siglip import SiglipVisionConfig
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    cfg = PALIGEMMA_224
    tokenizer = train_tokenizer(texts, VOCAB)
    image_processor = SiglipImageProcessorPil(size={"height": cfg["image_size"], "width": cfg["image_size"]},
                                              image_mean=cfg["mean_std"], image_std=cfg["mean_std"])
    image_processor.image_seq_length = cfg["image_tokens"]
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   chat_template=PALIGEMMA_TEMPLATE)
    width = NARROW["text_width"]
    vision = SiglipVisionConfig(hidden_size=NARROW["vision_width"], intermediate_size=NARROW["vision_width"] * 2,
                                num_hidden_layers=1, num_attention_heads=2, image_size=cfg["image_size"],
                                patch_size=cfg["patch_size"], projection_dim=width)
    text = GemmaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=width * 2,
                       num_hidden_layers=NARROW["text_layers"], num_attention_heads=NARROW["heads"],
                       num_key_value_heads=NARROW["heads"], head_dim=width // NARROW["heads"],
                       max_position_embeddings=cfg["max_position_embeddings"], pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
                             vocab_size=len(tokenizer), projection_dim=width, hidden_size=width)
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config)
    return _save(model, processor, tokenizer, out_dir, cfg["image_tokens"], cfg["image_size"])


REAL_FAMILIES = {
    "smolvlm-256m": build_smolvlm_256m,
    "llava-1.5": build_llava_15,
    "paligemma-224": build_paligemma_224,
}
