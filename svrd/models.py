"""Loading students (and local teachers) through the generic transformers path.

Every model loads by `AutoModelForImageTextToText` / `AutoProcessor` from a Hub id or a local
folder saved with `save_pretrained`; the project's tiny student takes the same path.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch

from svrd.errors import SvrdError

log = logging.getLogger(__name__)

# Attribute names under which families keep their vision encoder and projector
# (LLaVA/LLaVA-OneVision/PaliGemma: vision_tower + multi_modal_projector; Idefics3/SmolVLM:
# vision_model + connector; Qwen2-VL: visual, whose merger is its projector).
VISION_NAMES = ("vision_tower", "vision_model", "visual", "vision_encoder")
PROJECTOR_NAMES = ("multi_modal_projector", "connector", "mm_projector", "merger")


def pick_device() -> torch.device:
    """This process's device: under torchrun / accelerate launch the GPU of its LOCAL_RANK (as accelerate
    picks it), so that no rank first loads its copy of the model onto cuda:0."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def pick_dtype(precision: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """The dtype train.precision / prefer.precision names: for inference, the weights' dtype; for
    training, the autocast dtype over fp32 weights (mixed_precision)."""
    device = device or pick_device()
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    # auto: bf16 weights on a GPU that supports it; fp32 on CPU (training there may still autocast: mixed_precision).
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


# Trainable weights (and so AdamW's state) always stay in fp32: in pure bf16 AdamW's small updates round
# to zero (a toy AdamW run on a bf16 layer moved 14.8% of the weights at lr 1.4e-5 and 1.0% at DPO's 5e-7),
# and the fp16 grad scaler refuses to unscale fp16 gradients (on CPU as on a GPU). bf16/fp16 are the compute
# dtype (autocast).
TRAIN_WEIGHTS_DTYPE = torch.float32


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX: Intel Cooper Lake / Sapphire Rapids
    and later, AMD Zen 4 and later). Elsewhere bf16 autocast is slower than fp32: a training step of the tiny
    student took 1.2x fp32's time with oneDNN capped at AVX-512 without BF16, 12x at AVX2 (measured on a Zen 4
    core with ONEDNN_MAX_CPU_ISA; 0.6x with the native instructions)."""
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def mixed_precision(precision: str = "auto", device: torch.device | None = None,
                    param: str = "train.precision") -> str | None:
    """What training computes in over its fp32 weights: "bf16" or "fp16" autocast (Trainer's bf16=/fp16=),
    or None for plain fp32. auto: bf16 on a GPU that supports it and on a CPU with native bf16 (the tiny
    student's distill: 1.3x the tokens/s of fp32 on a Zen 4 core, the same accuracy), fp32 elsewhere.

    fp16 on CPU is fp16 autocast with a grad scaler, as on a GPU (CpuFp16Trainer; accelerate alone would
    silently train in fp32 there). `param` names the setting for callers' messages."""
    device = device or pick_device()
    if precision == "auto" and device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"  # training only: inference keeps fp32 weights on CPU (pick_dtype)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(pick_dtype(precision, device))


def enable_cpu_fp16(accelerator) -> bool:
    """Give a CPU accelerator asked for fp16 what accelerate gives a GPU: fp16 autocast and a grad scaler.

    accelerate 1.16's Accelerator.__init__ sets native_amp and the scaler for fp16 only when
    `device.type != "cpu"` (it predates torch's CPU fp16 autocast), so fp16=True with use_cpu=True trains
    in fp32 unannounced. torch >= 2.3 has both torch.autocast("cpu", dtype=float16) and
    torch.amp.GradScaler("cpu"); set the two attributes accelerate's own fp16 path reads (prepare wraps the
    forward in get_mixed_precision_context_manager, which is fp16 autocast for mixed_precision "fp16";
    backward, clip_grad_norm_ and the optimizer step use the scaler). Must run before prepare().
    Returns whether it changed anything."""
    from accelerate.utils import DistributedType, get_grad_scaler

    if (accelerator.mixed_precision != "fp16" or accelerator.device.type != "cpu" or accelerator.native_amp
            or accelerator.distributed_type not in (DistributedType.NO, DistributedType.MULTI_CPU)):
        return False
    if not torch.amp.is_autocast_available("cpu"):
        raise SvrdError("fp16 on CPU needs torch's CPU fp16 autocast (torch >= 2.3); use bf16 or fp32 on CPU")
    kwargs = accelerator.scaler_handler.to_kwargs() if accelerator.scaler_handler is not None else {}
    accelerator.native_amp = True
    accelerator.scaler = get_grad_scaler(accelerator.distributed_type, **kwargs)  # torch.amp.GradScaler("cpu")
    return True


class CpuFp16Trainer:
    """Mixin for transformers' Trainer (and TRL's trainers): fp16=True on CPU computes in fp16 autocast with a
    grad scaler over the fp32 weights instead of silently in fp32 (enable_cpu_fp16). A Trainer subclass
    hook, because Trainer builds its Accelerator itself and accelerate has no option to allow CPU fp16."""

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if enable_cpu_fp16(self.accelerator):
            log.info("fp16 on CPU: fp16 autocast and a grad scaler over fp32 weights")


def require_fp32_trainable(model) -> None:
    """Mixed precision needs fp32 master weights: refuse a model whose trainable weights are half
    precision (AdamW's small updates would round to zero; load it in TRAIN_WEIGHTS_DTYPE)."""
    half = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad and p.dtype != TRAIN_WEIGHTS_DTYPE})
    if half:
        raise ValueError(f"training keeps fp32 weights and computes in bf16/fp16 by autocast; this model's "
                         f"trainable weights are {', '.join(half)}: load it in float32")


def autocast(precision: str = "auto", device: torch.device | None = None):
    """A context computing in `precision`'s dtype over fp32 weights (a no-op for fp32): for what a
    training stage generates with the model it trains."""
    device = device or pick_device()
    compute = pick_dtype(precision, device)
    return torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32)


def _from_pretrained(loader, name_or_path: str, param: str | None, **kwargs):
    """loader.from_pretrained, with one actionable line (SvrdError) when `name_or_path` is neither a
    local folder nor a Hub id that can be reached (huggingface_hub's OSError is a long traceback)."""
    try:
        return loader.from_pretrained(name_or_path, **kwargs)
    except OSError as exc:
        if Path(name_or_path).is_dir():
            raise  # a local folder that is not a model: transformers names the missing file
        raise SvrdError(not_loadable(name_or_path, param, exc)) from None


def not_loadable(name_or_path: str, param: str | None, exc: Exception) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    where = f"{param}={name_or_path}" if param else repr(name_or_path)
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return (f"{where} is not a local folder (no such directory) nor a Hugging Face Hub id: "
                f"point {param or 'it'} at a folder saved with save_pretrained")
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"{where} is not a local folder, and the Hub could not give it ({first_line}): fetch it once "
            f"with `hf download {name_or_path} --local-dir DIR` and set {param or 'the param'}=DIR")


# Loading kwargs that transformers keeps in a tokenizer's init_kwargs and writes back into
# tokenizer_config.json on save: `local_files_only` follows HF_HUB_OFFLINE, so a student saved by an
# offline run (CI, scripts/check_lock.py) hashed differently from the same student saved online.
ENVIRONMENT_KWARGS = ("local_files_only",)


def load_processor(name_or_path: str, trust_remote_code: bool = False, param: str | None = None):
    from transformers import AutoProcessor

    processor = _from_pretrained(AutoProcessor, name_or_path, param, trust_remote_code=trust_remote_code)
    for part in (processor, getattr(processor, "tokenizer", None), getattr(processor, "image_processor", None)):
        kwargs = getattr(part, "init_kwargs", None)
        if isinstance(kwargs, dict):
            for key in ENVIRONMENT_KWARGS:
                kwargs.pop(key, None)
    return processor


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


def load_model(name_or_path: str, trust_remote_code: bool = False, dtype: torch.dtype | None = None, device_map=None,
               param: str | None = None):
    """A full model, or a LoRA adapter folder (adapter_config.json): its base, then the adapter on it.
    `param` (e.g. "student.model") names the setting in the one-line error when nothing loads."""
    from transformers import AutoModelForImageTextToText

    if trust_remote_code:
        log.warning("trust_remote_code is ON for %s: code from the model repository will run", name_or_path)
    base = adapter_base(name_or_path)
    model = _from_pretrained(
        AutoModelForImageTextToText, base or name_or_path, param,
        trust_remote_code=trust_remote_code, dtype=dtype or torch.float32, device_map=device_map,
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

# Image tokens are counted on an image of a realistic size (a 4:3 photo-like 640x480), not a tiny
# dummy: tiling families (Idefics3/SmolVLM) give a tiny image as many tiles as a large one, and
# Qwen2-VL's count grows with the pixels.
REALISTIC_IMAGE = (640, 480)


def count_image_tokens(processor, size: tuple[int, int] = REALISTIC_IMAGE) -> int:
    """Image tokens the processor puts in a prompt for one RGB image of `size` (width, height)."""
    from PIL import Image

    from svrd.examples import messages_for, tokenizer_of

    text = processor.apply_chat_template(messages_for("x", True), add_generation_prompt=True, tokenize=False)
    enc = processor(images=[Image.new("RGB", size, (128, 64, 32))], text=[text], return_tensors="pt")
    if "image_embeds_position_mask" in enc:  # KOSMOS-2: the latent-query places between <image> and </image>
        return int(enc["image_embeds_position_mask"][0].sum())
    tok = tokenizer_of(processor)
    image_token = getattr(processor, "image_token", None) or getattr(tok, "image_token", None) or "<image>"
    return int((enc["input_ids"][0] == tok.convert_tokens_to_ids(image_token)).sum())


def family_of(model) -> str:
    config = getattr(model, "config", model)
    return getattr(config, "model_type", type(model).__name__)


def _is_tiling(processor, config) -> bool:
    """Idefics3 / SmolVLM: fixed-size tiles (+ a global view), pixel-shuffled to image_seq_len tokens each."""
    image_processor = getattr(processor, "image_processor", None)
    return (hasattr(processor, "image_seq_len") and hasattr(image_processor, "max_image_size")
            and hasattr(config, "scale_factor"))


def _is_pixel_budget(processor) -> bool:
    """Qwen2-VL-style processors: the token count follows the pixels, bounded by min_pixels/max_pixels
    (kept as size.shortest_edge / size.longest_edge, in pixels)."""
    image_processor = getattr(processor, "image_processor", None)
    return all(hasattr(image_processor, a) for a in ("merge_size", "temporal_patch_size", "patch_size", "size"))


def _tiles_for_budget(image_tokens: int, per_tile: int) -> int:
    """Tiles per longest side n such that a square image's n*n tiles (+1 global view when n > 1) fit."""
    n = 1
    while ((n + 1) ** 2 + 1) * per_tile <= image_tokens:
        n += 1
    return n


def _apply_tiling(processor, config, image_tokens: int) -> str:
    """The budget as a cap on tiles of the encoder's native size; below one tile, one smaller image.
    The encoder never sees a tile above its native resolution (no position-embedding stretching)."""
    image_processor = processor.image_processor
    tile = image_processor.max_image_size["longest_edge"]
    per_tile = processor.image_seq_len
    if image_tokens >= per_tile:
        n = _tiles_for_budget(image_tokens, per_tile)
        image_processor.do_image_splitting = n > 1
        image_processor.size = {"longest_edge": n * tile}
        if n == 1:
            return f"one {tile}px image, no tiling ({per_tile} tokens)"
        return f"at most {n}x{n} tiles of {tile}px + a global view ({per_tile} tokens each)"
    per_side = max(1, math.isqrt(image_tokens))
    side = per_side * config.vision_config.patch_size * config.scale_factor
    image_processor.do_image_splitting = False
    image_processor.max_image_size = {"longest_edge": side}
    image_processor.size = {"longest_edge": side}
    processor.image_seq_len = per_side**2
    return f"one {side}px image, no tiling ({per_side**2} tokens; native tiles are {tile}px)"


def _apply_pixel_budget(processor, image_tokens: int) -> str:
    """Qwen2-VL: one token per (patch * merge)^2 pixels, so the budget is max_pixels (min_pixels below it)."""
    image_processor = processor.image_processor
    unit = (image_processor.patch_size * image_processor.merge_size) ** 2
    max_pixels = image_tokens * unit
    min_pixels = min(image_processor.size["shortest_edge"], max_pixels)
    image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return f"max_pixels={max_pixels} (at most {image_tokens} tokens), min_pixels={min_pixels}"


def _is_anyres_max(processor, config) -> bool:
    """LLaVA-OneVision: a base view of the whole image plus a grid of native tiles, the grid chosen among
    image_grid_pinpoints; the grid's features unpadded to the image's aspect, one newline token per feature
    row, and pooled down to about K tiles' worth past 1.1x that (vision_aspect_ratio "anyres_max_K")."""
    image_processor = getattr(processor, "image_processor", None)
    return (isinstance(getattr(processor, "vision_aspect_ratio", None), str)
            and bool(getattr(processor, "num_image_tokens", None))
            and hasattr(image_processor, "image_grid_pinpoints") and hasattr(config, "image_grid_pinpoints"))


def _anyres_bound(rows: int, cols: int, per_tile: int, max_tiles: int) -> int:
    """The most image tokens one image can give on a rows x cols grid (LlavaOnevisionProcessor's count):
    the base view (per_tile), the grid's unpadded features (at most rows*cols tiles' worth, and at most
    1.21 * max_tiles tiles' worth: beyond a ratio of 1.1 they are pooled to max_tiles tiles' worth) and one
    newline per feature row (at most rows * side)."""
    side = math.isqrt(per_tile)
    return per_tile + min(rows * cols * per_tile, int(1.21 * max_tiles * per_tile)) + rows * side


def _apply_anyres_max(processor, config, image_tokens: int) -> str:
    """LLaVA-OneVision: the budget as a cap on the tile grids (image_grid_pinpoints, in the processor and the
    model config, which must agree): keep the grids whose most tokens fit. Tiles stay at the encoder's
    native size and anyres_max_K is untouched, so the model sees only grids it was trained on. Below the
    smallest grid (one tile + the base view) no grid fits: the smallest is kept, and the how says so."""
    image_processor = processor.image_processor
    tile = config.vision_config.image_size
    per_tile = processor.num_image_tokens
    max_tiles = int(processor.vision_aspect_ratio.removeprefix("anyres_max_"))
    pinpoints = [list(p) for p in image_processor.image_grid_pinpoints]
    bound = {tuple(p): _anyres_bound(p[0] // tile, p[1] // tile, per_tile, max_tiles) for p in pinpoints}
    kept = [p for p in pinpoints if bound[tuple(p)] <= image_tokens]
    below = not kept
    if below:
        smallest = min(bound.values())
        kept = [p for p in pinpoints if bound[tuple(p)] == smallest]
    image_processor.image_grid_pinpoints = kept
    config.image_grid_pinpoints = [list(p) for p in kept]
    most = max(bound[tuple(p)] for p in kept)
    tiles = max((p[0] // tile) * (p[1] // tile) for p in kept)
    what = (f"{len(kept)} of {len(pinpoints)} tile grids of {tile}px kept (up to {tiles} tile{'s' * (tiles > 1)}; "
            f"{per_tile} tokens per tile + a base view + a newline per row, {processor.vision_aspect_ratio}): "
            f"at most {most} tokens")
    if below:
        return f"{what}, the family's minimum: {image_tokens} is below one tile + the base view"
    return what


def apply_image_tokens(model, processor, image_tokens: int | None) -> dict:
    """Apply student.image_tokens where the family has a knob for it; say what was applied.

    None (the default): the family's native processing, untouched. A number is a budget of image
    tokens per image: Idefics3/SmolVLM cap their tiles (never above the encoder's native tile size),
    Qwen2-VL-style processors their max_pixels, LLaVA-OneVision its tile grids (image_grid_pinpoints,
    in the processor and the model config); fixed-resolution families (LLaVA, PaliGemma, the tiny
    student) have no such knob and keep theirs, and say so ("not applicable: ..."). Returns {"family",
    "image_tokens" (what a 640x480 image now gives), "requested", "applied", "how"}.
    """
    config = getattr(model, "config", model)
    family = family_of(model)
    if image_tokens is None:
        how, applied = "native processing", False
    elif _is_tiling(processor, config):
        how, applied = _apply_tiling(processor, config, image_tokens), True
    elif _is_pixel_budget(processor):
        how, applied = _apply_pixel_budget(processor, image_tokens), True
    elif _is_anyres_max(processor, config):
        how, applied = _apply_anyres_max(processor, config, image_tokens), True
    elif hasattr(getattr(processor, "image_processor", None), "image_grid_pinpoints"):
        how, applied = "not applicable: an anyres grid this code does not map (LLaVA-NeXT), native processing", False
    else:
        how, applied = "not applicable: fixed resolution, native processing", False
    actual = count_image_tokens(processor)
    log.info("student.image_tokens=%s on %s: %s; a %dx%d image gives %d image tokens",
             image_tokens, family, how, *REALISTIC_IMAGE, actual)
    return {"family": family, "image_tokens": actual, "requested": image_tokens, "applied": applied, "how": how}


def image_tokens_line(info: dict) -> str:
    """One line for logs: what student.image_tokens did on this family."""
    w, h = REALISTIC_IMAGE
    return (f"{info['image_tokens']} image tokens for a {w}x{h} image ({info['family']}, "
            f"student.image_tokens={info['requested']}: {info['how']})")


def load_student(student, precision: str) -> tuple:
    """The student as distill trains it, before LoRA: on its device in fp32, student.image_tokens
    applied, frozen as student.* says. Shared by the features and distill stages so that the cached
    features' fingerprint (svrd.features) is taken on the very model distill trains.

    The weights load in fp32 whatever `precision` (train.precision) says: training computes in it by
    autocast over them (mixed_precision), and the features stage caches what the fp32 encoder gives.

    Returns (model, processor, image-token info from apply_image_tokens, parameter counts from freeze)."""
    device = pick_device()
    model = load_model(student.model, student.trust_remote_code, TRAIN_WEIGHTS_DTYPE, param="student.model").to(device)
    processor = load_processor(student.model, student.trust_remote_code, param="student.model")
    tokens = apply_image_tokens(model, processor, student.image_tokens)  # saved with the processor for infer
    counts = freeze(model, vision=student.freeze_vision, projector_too=student.freeze_projector)
    return model, processor, tokens, counts
