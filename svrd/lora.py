"""LoRA through PEFT, on the language model only.

PEFT's `all-linear` shorthand would also wrap the vision tower's linear layers; the paper keeps
the vision encoder frozen, so the target is written out as a regex over the text model's own
module names (the vision encoder and projector excluded, and the output head). With
`train.lora.merge` the adapter is merged into the base weights before saving, so infer loads a
plain model; otherwise the adapter is saved (safetensors) and svrd.models.load_model puts it
back on its base.
"""

from __future__ import annotations

import logging
import os
import re

import torch

from svrd.models import projector, vision_encoder

log = logging.getLogger(__name__)

OUTPUT_HEADS = ("lm_head", "output", "embed_out")


def _names_under(model: torch.nn.Module, sub: torch.nn.Module | None) -> str | None:
    if sub is None:
        return None
    for name, module in model.named_modules():
        if module is sub:
            return name
    return None


def text_linear_names(model: torch.nn.Module, target_modules) -> list[str]:
    """Full names of the text model's nn.Linear layers matching `target_modules` ('all-linear' or leaf names)."""
    excluded = [n for n in (_names_under(model, vision_encoder(model)), _names_under(model, projector(model))) if n]
    wanted = None if target_modules == "all-linear" else set([target_modules] if isinstance(target_modules, str)
                                                            else target_modules)
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in OUTPUT_HEADS or any(name == e or name.startswith(e + ".") for e in excluded):
            continue
        if wanted is None or leaf in wanted:
            names.append(name)
    if not names:
        raise ValueError(f"train.lora.target_modules={target_modules!r} matches no linear layer of the text model")
    return names


def target_regex(names: list[str]) -> str:
    """A compact regex matching exactly these module names: common prefix, then the leaf names."""
    prefix = os.path.commonprefix([n.split(".") for n in names])
    head = ".".join(prefix)
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    regex = (re.escape(head) + r"\..*" if head else ".*") + r"\.(" + "|".join(map(re.escape, leaves)) + ")"
    return regex


def apply_lora(model: torch.nn.Module, cfg, train_projector: bool = True, seed: int = 0):
    """Wrap `model` with LoRA adapters on the text model's linear layers; returns the PeftModel.

    The adapters' random init is drawn from `seed` (train.seed): the Trainer seeds only after the
    model exists, so an unseeded init differed between runs, and between a killed run and its resume.
    """
    from peft import LoraConfig, get_peft_model

    names = text_linear_names(model, cfg.target_modules)
    regex = target_regex(names)
    matched = [n for n, _ in model.named_modules() if re.fullmatch(regex, n)]
    if sorted(matched) != sorted(names):  # a vision layer sharing the text model's prefix: list names instead
        regex = None
    proj = _names_under(model, projector(model)) if train_projector else None
    config = LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=regex or names,
        modules_to_save=[proj] if proj else None,  # the projector keeps training in full, as without LoRA
        bias="none",
    )
    with torch.random.fork_rng():  # seed the init without moving the caller's RNG
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    log.info("LoRA r=%d on %d text linear layers (%s)", cfg.r, len(names), regex or "listed")
    return peft_model


def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def finalize(model, merge: bool):
    """What to save after training: the merged plain model, or the PeftModel (adapter only)."""
    if is_peft(model) and merge:
        return model.merge_and_unload()
    return model
