"""Cached frozen vision features (train.cache_vision_features).

With the vision encoder frozen, its output for a training image is the same in every epoch and
in every `dvc exp` sweep over training params, so distill computes it once per (student vision
weights, image) and feeds the student the cached features instead of pixel_values.

How the features reach the model: transformers (5.x) VLMs take `mm_encoder_outputs=
{"image": BaseModelOutputWithPooling(pooler_output=...)}` in forward() -- the same object
`get_image_features()` returns -- and then skip the vision tower (LLaVA, Idefics3/SmolVLM,
PaliGemma). What is cached depends on what trains:

- mode "projected" (student.freeze_projector true): the projector's output, i.e. get_image_features'
  pooler_output, per image; the whole image path is skipped.
- mode "vision" (projector trains): the projector's *input* (the vision tower's selected hidden
  states), captured by a forward pre-hook on the projector; each step runs the projector on them
  (with gradients), so the result is exactly what the live path computes.

Both are checked when the cache is filled: for the first image, the reconstruction (projector on
the cached input, reshaped as the family does) must equal the live pooler_output, otherwise the
family is refused with a SvrdError rather than trained on something else.

The cache lives under svrd.stage.cache_dir()/features/<fingerprint>/<image sha256>.safetensors,
a persistent work cache outside DVC outputs (like distill's checkpoints): `dvc repro` / `dvc exp`
never delete it, and because the fingerprint covers everything the features depend on (the vision
encoder's weights -- and the projector's in mode "projected" --, the model config outside the text
model, the image processor config, the mode and the dtype) and the file name is the image's
content hash, a stale entry can never be read: a changed student or processor is a new folder.

The batch carries `vision_features` ([sum of per-image leading dims, ...]) and
`vision_feature_sizes` (the leading dim of each image's entry); a forward pre-hook on the model
turns them into `mm_encoder_outputs` inside the model call (so DDP/accelerate wrapping sees the
projector run inside forward).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch

from svrd.errors import SvrdError
from svrd.examples import Example, TrainingDataset, encode_prompt, encode_training
from svrd.models import projector, vision_encoder

log = logging.getLogger(__name__)

# Processor outputs that are text, not image inputs of the vision tower.
TEXT_KEYS = {"input_ids", "attention_mask", "labels", "token_type_ids", "mm_token_type_ids"}
# What a cached-feature training item keeps from encode_training (the image tensors are dropped).
ITEM_TEXT_KEYS = {"input_ids", "labels", "token_type_ids", "mm_token_type_ids"}
FEATURES, SIZES = "vision_features", "vision_feature_sizes"


def base_model(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def cache_mode(model) -> str:
    """'projected' when the projector is frozen too, 'vision' when it trains; SvrdError when the
    vision encoder trains (its features then change every step and cannot be cached exactly)."""
    enc = vision_encoder(model)
    if any(p.requires_grad for p in enc.parameters()):
        raise SvrdError("train.cache_vision_features needs a frozen vision encoder (student.freeze_vision: true): "
                        "a trained encoder's features change every step")
    proj = projector(model)
    if proj is None:
        raise SvrdError(f"train.cache_vision_features: cannot find the projector of {type(base_model(model)).__name__}")
    return "projected" if not any(p.requires_grad for p in proj.parameters()) else "vision"


def check_params(student, train) -> None:
    """Stage-level refusal (before any work): train.cache_vision_features needs student.freeze_vision."""
    if train.cache_vision_features and not student.freeze_vision:
        raise SvrdError("train.cache_vision_features: true needs student.freeze_vision: true "
                        "(a trained vision encoder's features change every step and cannot be cached)")


def _hash_module(h, module: torch.nn.Module) -> None:
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def fingerprint(model, processor, mode: str) -> str:
    """sha256 over what the cached features depend on (see the module docstring)."""
    h = hashlib.sha256()
    config = base_model(model).config.to_dict()
    for key in ("text_config", "_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype"):
        config.pop(key, None)
    image_processor = getattr(processor, "image_processor", None)
    ip = image_processor.to_dict() if image_processor is not None else {}
    h.update(json.dumps({"mode": mode, "model": type(base_model(model)).__name__, "config": config,
                         "image_processor": ip, "dtype": str(next(model.parameters()).dtype)},
                        sort_keys=True, default=str).encode())
    _hash_module(h, vision_encoder(model))
    if mode == "projected":
        _hash_module(h, projector(model))
    return h.hexdigest()[:24]


def image_sha(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()


class FeatureStore:
    """One safetensors file per image under root/<fingerprint>/; `as_list` records whether the
    family's pooler_output is a list of per-image tensors (LLaVA, Idefics3) or one tensor (PaliGemma)."""

    def __init__(self, root: str | Path, fp: str, mode: str):
        self.dir = Path(root) / fp
        self.mode = mode
        self.as_list = True

    def path(self, sha: str) -> Path:
        return self.dir / f"{sha}.safetensors"

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def save(self, sha: str, features: torch.Tensor) -> None:
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path(sha).with_suffix(f".tmp{os.getpid()}")
        save_file({"features": features.detach().cpu().contiguous()}, str(tmp))
        os.replace(tmp, self.path(sha))  # atomic: a killed run leaves no half-written entry

    def load(self, sha: str) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(str(self.path(sha)))["features"]


def _image_inputs(processor, image: bytes, device) -> dict:
    enc = encode_prompt(processor, Example("features", image, ""))
    return {k: v.to(device) for k, v in enc.items() if k not in TEXT_KEYS and torch.is_tensor(v)}


def _live(model, processor, image: bytes) -> tuple[torch.Tensor, object]:
    """(projector input, pooler_output) of one image through the live path."""
    base = base_model(model)
    captured = []
    handle = projector(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    try:
        out = base.get_image_features(**_image_inputs(processor, image, next(model.parameters()).device),
                                      return_dict=True)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise SvrdError(f"train.cache_vision_features: {type(base).__name__}.get_image_features ran its projector "
                        f"{len(captured)} times for one image; not supported")
    return captured[0], out.pooler_output


def _entry(mode: str, proj_input: torch.Tensor, pooled) -> torch.Tensor:
    """What the store keeps for one image: [k, ...] with a leading dim the collator concatenates."""
    if mode == "vision":
        return proj_input
    if isinstance(pooled, (list, tuple)):
        if len(pooled) != 1:
            raise SvrdError("train.cache_vision_features: one image gave several pooled outputs; not supported")
        return pooled[0].unsqueeze(0)
    return pooled


def pooled_from(model, store: FeatureStore, features: torch.Tensor, sizes: torch.Tensor):
    """Cached entries of a batch -> the family's pooler_output (projector applied in mode 'vision')."""
    if store.mode == "vision":
        proj = projector(model)
        features = proj(features.to(next(proj.parameters()).dtype))
    per_image = torch.split(features, [int(n) for n in sizes])
    if store.as_list:
        return [f.reshape(-1, f.shape[-1]) for f in per_image]
    return features


@torch.no_grad()
def fill(model, processor, examples: list[Example], store: FeatureStore) -> dict:
    """Compute the features of every image not in the store yet (vision tower in eval mode)."""
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    images = {image_sha(ex.image): ex.image for ex in examples if ex.image is not None}
    computed = 0
    try:
        first = next(iter(images.items()), None)
        if first is not None:
            # Exactness check on one image (also fixes list vs tensor pooler_output).
            proj_input, pooled = _live(model, processor, first[1])
            store.as_list = isinstance(pooled, (list, tuple))
            entry = _entry(store.mode, proj_input, pooled)
            rebuilt = pooled_from(model, store, entry, torch.tensor([entry.shape[0]]))
            live = torch.cat(list(pooled)) if store.as_list else pooled
            rebuilt = torch.cat(rebuilt) if store.as_list else rebuilt
            if rebuilt.shape != live.shape or not torch.allclose(rebuilt.float(), live.float(), atol=1e-6, rtol=1e-5):
                raise SvrdError(f"train.cache_vision_features: cached features of {type(base_model(model)).__name__} "
                                f"do not reproduce its live image features (mode {store.mode}); not supported")
        for sha, image in images.items():
            if store.has(sha):
                continue
            proj_input, pooled = _live(model, processor, image)
            store.save(sha, _entry(store.mode, proj_input, pooled))
            computed += 1
    finally:
        model.train(was_training)
    return {"images": len(images), "computed": computed, "reused": len(images) - computed,
            "seconds": round(time.perf_counter() - t0, 2), "mode": store.mode, "fingerprint": store.dir.name}


class CachedFeatureDataset(TrainingDataset):
    """TrainingDataset whose items carry cached vision features instead of image tensors.

    The text part (prompt with expanded image tokens + target, labels) is encoded once and kept:
    it is identical every epoch, and re-encoding it would decode and preprocess the image again.
    """

    def __init__(self, processor, examples: list[Example], max_length: int, store: FeatureStore):
        super().__init__(processor, examples, max_length)
        self.store = store
        self._text: dict[int, dict] = {}

    def __getitem__(self, i: int) -> dict:
        if i not in self._text:
            enc = encode_training(self.processor, self.examples[i], self.max_length)
            self._text[i] = {k: v for k, v in enc.items() if k in ITEM_TEXT_KEYS}
        item = dict(self._text[i])
        image = self.examples[i].image
        if image is not None:
            features = self.store.load(image_sha(image))
            item[FEATURES] = features
            item[SIZES] = torch.tensor([features.shape[0]])
        return item


def install(model, store: FeatureStore):
    """Forward pre-hook: `vision_features` + `vision_feature_sizes` -> `mm_encoder_outputs`. Returns its handle."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    def hook(_module, args, kwargs):
        features = kwargs.pop(FEATURES, None)
        sizes = kwargs.pop(SIZES, None)
        if features is None:
            return args, kwargs
        pooled = pooled_from(model, store, features, sizes)
        kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=pooled)}
        return args, kwargs

    return model.register_forward_pre_hook(hook, with_kwargs=True)


def prepare(model, processor, train_examples: list[Example], val_examples: list[Example], max_length: int,
            root: str | Path):
    """Fill the cache and return (train dataset, val dataset or None, hook handle, stats)."""
    mode = cache_mode(model)
    store = FeatureStore(root, fingerprint(model, processor, mode), mode)
    stats = fill(model, processor, list(train_examples) + list(val_examples), store)
    log.info("vision features: %s", stats)
    train_ds = CachedFeatureDataset(processor, train_examples, max_length, store)
    val_ds = CachedFeatureDataset(processor, val_examples, max_length, store) if val_examples else None
    return train_ds, val_ds, install(model, store), stats
