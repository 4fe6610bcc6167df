"""Loading students (and local teachers) through the generic transformers path.

Every model loads by `AutoModelForImageTextToText` / `AutoProcessor` from a Hub id or a local
folder saved with `save_pretrained`; the project's tiny student takes the same path.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Attribute names under which families keep their vision encoder and projector
# (LLaVA/LLaVA-OneVision/PaliGemma: vision_tower + multi_modal_projector; Idefics3/SmolVLM:
# vision_model + connector; Qwen2-VL: visual, whose merger is its projector).
VISION_NAMES = ("vision_tower", "vision_model", "visual", "vision_encoder")
PROJECTOR_NAMES = ("multi_modal_projector", "connector", "mm_projector", "merger")


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(precision: str = "auto", device: torch.device | None = None) -> torch.dtype:
    device = device or pick_device()
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    # auto: bf16 on a GPU that supports it, fp32 on CPU (bf16 matmuls are slow there).
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_processor(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(name_or_path: str) -> str | None:
    """The base model a saved PEFT adapter folder names, or None when the folder holds a full model."""
    config = Path(name_or_path) / ADAPTER_CONFIG
    if not config.is_file():
        return None
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config} names no base_model_name_or_path: cannot load the adapter")
    return base


def load_model(name_or_path: str, trust_remote_code: bool = False, dtype: torch.dtype | None = None, device_map=None):
    """A full model, or a LoRA adapter folder (adapter_config.json): its base, then the adapter on it."""
    from transformers import AutoModelForImageTextToText

    if trust_remote_code:
        log.warning("trust_remote_code is ON for %s: code from the model repository will run", name_or_path)
    base = adapter_base(name_or_path)
    model = AutoModelForImageTextToText.from_pretrained(
        base or name_or_path, trust_remote_code=trust_remote_code, dtype=dtype or torch.float32, device_map=device_map
    )
    if base is None:
        return model
    from peft import PeftModel

    log.info("%s is a LoRA adapter on %s", name_or_path, base)
    return PeftModel.from_pretrained(model, name_or_path, is_trainable=False)


def _find_submodule(model: torch.nn.Module, names: tuple[str, ...]) -> torch.nn.Module | None:
    for module_name, module in model.named_modules():
        if module_name.split(".")[-1] in names:
            return module
    return None


def vision_encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The image encoder of any VLM family: transformers' own accessor first, then known names."""
    get_encoder = getattr(model, "get_encoder", None)
    if get_encoder is not None:
        try:
            enc = get_encoder(modality="image")
            if enc is not None and enc is not model:
                return enc
        except (TypeError, ValueError, AttributeError, NotImplementedError):
            pass
    enc = _find_submodule(model, VISION_NAMES)
    if enc is None:
        raise ValueError(f"cannot find the vision encoder of {type(model).__name__}")
    return enc


def projector(model: torch.nn.Module) -> torch.nn.Module | None:
    return _find_submodule(model, PROJECTOR_NAMES)


def freeze(model: torch.nn.Module, vision: bool = True, projector_too: bool = False) -> dict:
    """Freeze the vision encoder (and optionally the projector); returns parameter counts."""
    if vision:
        for p in vision_encoder(model).parameters():
            p.requires_grad_(False)
    if projector_too:
        proj = projector(model)
        if proj is None:
            raise ValueError(f"cannot find the projector of {type(model).__name__}")
        for p in proj.parameters():
            p.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable": trainable}


# --- image tokens (student.image_tokens) -------------------------------------------------------


def count_image_tokens(processor) -> int:
    """Image tokens the processor puts in a prompt for one image (a 48x40 RGB test image)."""
    from PIL import Image

    from svrd.examples import messages_for, tokenizer_of

    text = processor.apply_chat_template(messages_for("x", True), add_generation_prompt=True, tokenize=False)
    enc = processor(images=[Image.new("RGB", (48, 40), (128, 64, 32))], text=[text], return_tensors="pt")
    tok = tokenizer_of(processor)
    image_token = getattr(processor, "image_token", None) or getattr(tok, "image_token", None) or "<image>"
    return int((enc["input_ids"][0] == tok.convert_tokens_to_ids(image_token)).sum())


def apply_image_tokens(model, processor, image_tokens: int) -> dict:
    """Set the image resolution so one image gives as close to `image_tokens` tokens as the family allows.

    Idefics3/SmolVLM: one image (no tiling), side = patch * scale_factor * round(sqrt(n)), and the
    processor's image_seq_len to match. Families whose processor fixes the resolution to the
    vision tower's (LLaVA, PaliGemma, ...) are left as they are: logged as not applicable.
    Returns {"image_tokens": what one image now gives, "requested": n, "applied": bool}.
    """
    config = getattr(model, "config", model)
    image_processor = getattr(processor, "image_processor", None)
    if hasattr(processor, "image_seq_len") and hasattr(image_processor, "max_image_size") and hasattr(config, "scale_factor"):
        patch = config.vision_config.patch_size
        scale = config.scale_factor
        per_side = max(1, round(math.sqrt(image_tokens)))
        side = per_side * patch * scale
        image_processor.do_image_splitting = False  # one global image: its token count is exactly per_side**2
        image_processor.max_image_size = {"longest_edge": side}
        image_processor.size = {"longest_edge": side}
        processor.image_seq_len = per_side**2
        native = config.vision_config.image_size
        if side > native:
            log.warning("student.image_tokens=%d needs %dpx images, above the vision encoder's native %dpx "
                        "(its position embeddings are shared across the larger grid)", image_tokens, side, native)
        actual = count_image_tokens(processor)
        if actual != per_side**2:
            raise ValueError(f"image_tokens: expected {per_side**2} image tokens per image, the processor gives {actual}")
        log.info("student.image_tokens=%d: %dpx images, %d image tokens", image_tokens, side, actual)
        return {"image_tokens": actual, "requested": image_tokens, "applied": True, "image_size": side}
    actual = count_image_tokens(processor)
    log.info("student.image_tokens=%d is not applicable to %s (fixed resolution): it uses %d image tokens",
                image_tokens, type(model).__name__, actual)
    return {"image_tokens": actual, "requested": image_tokens, "applied": False}


def load_student(student, precision: str) -> tuple:
    """The student as distill trains it, before LoRA: on its device at train.precision, student.image_tokens
    applied, frozen as student.* says. Shared by the features and distill stages so that the cached
    features' fingerprint (svrd.features) is taken on the very model distill trains.

    Returns (model, processor, image-token info from apply_image_tokens, parameter counts from freeze)."""
    device = pick_device()
    model = load_model(student.model, student.trust_remote_code, pick_dtype(precision, device)).to(device)
    processor = load_processor(student.model, student.trust_remote_code)
    tokens = apply_image_tokens(model, processor, student.image_tokens)  # saved with the processor for infer
    counts = freeze(model, vision=student.freeze_vision, projector_too=student.freeze_projector)
    return model, processor, tokens, counts
