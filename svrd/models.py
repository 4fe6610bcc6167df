"""Loading students (and local teachers) through the generic transformers path.

Every model loads by `AutoModelForImageTextToText` / `AutoProcessor` from a Hub id or a local
folder saved with `save_pretrained`; the project's tiny student takes the same path.
"""

from __future__ import annotations

import logging

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


def load_model(name_or_path: str, trust_remote_code: bool = False, dtype: torch.dtype | None = None, device_map=None):
    from transformers import AutoModelForImageTextToText

    if trust_remote_code:
        log.warning("trust_remote_code is ON for %s: code from the model repository will run", name_or_path)
    return AutoModelForImageTextToText.from_pretrained(
        name_or_path, trust_remote_code=trust_remote_code, dtype=dtype or torch.float32, device_map=device_map
    )


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
