"""Cached frozen vision features (train.cache_vision_features; the `features` stage).

With the vision encoder frozen, its output for a training image is the same in every epoch and
in every `dvc exp` sweep over training params, so the `features` stage computes it once per
(student, image) into data/features/ -- a DVC output, pushed and pulled like every artifact --
and distill feeds the student those features instead of pixel_values.

How the features reach the model: transformers (5.x) VLMs take `mm_encoder_outputs=
{"image": BaseModelOutputWithPooling(pooler_output=...)}` in forward() -- the same object
`get_image_features()` returns -- and then skip the vision tower (LLaVA, Idefics3/SmolVLM,
PaliGemma). What is cached depends on what trains:

- mode "projected" (student.freeze_projector true): the projector's output, i.e. get_image_features'
  pooler_output, per image; the whole image path is skipped.
- mode "vision" (projector trains): the projector's *input* (the vision tower's selected hidden
  states), captured by a forward pre-hook on the projector; each step runs the projector on them
  (with gradients), so the result is exactly what the live path computes.

The folder (svrd.stage.FEATURES):

    manifest.json                               fingerprint and its parts, mode, dtype, counts
    <fingerprint>/<image sha256>.safetensors    one entry per distinct train/val image

The fingerprint covers everything the features depend on: the vision encoder's weights (and the
projector's in mode "projected"), the model config outside the text model, the image processor
config (student.image_tokens), the mode (student.freeze_projector) and the dtype (train.precision).
distill recomputes it on the student it trains and refuses a folder whose fingerprint differs,
naming the part that differs; it also re-checks on one image that the stored entry reproduces the
live features. With the cache off the stage writes only a manifest saying so (`enabled: false`).

The stage computes entries into a content-addressed work cache, svrd.stage.cache_dir()/features/
<fingerprint>/, one atomically written file per image: DVC deletes a stage's outputs before it
re-runs, so a killed stage resumes from there. The output folder is then hard-linked from it and
swapped in whole (svrd.io.atomic_dir).

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
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from svrd.errors import SvrdError
from svrd.examples import Example, TrainingDataset, encode_prompt, encode_training
from svrd.io import atomic_dir, read_json, write_json
from svrd.models import count_image_tokens, projector, vision_encoder

log = logging.getLogger(__name__)

# Processor outputs that are text, not image inputs of the vision tower.
TEXT_KEYS = {"input_ids", "attention_mask", "labels", "token_type_ids", "mm_token_type_ids"}
# What a cached-feature training item keeps from encode_training (the image tensors are dropped).
ITEM_TEXT_KEYS = {"input_ids", "labels", "token_type_ids", "mm_token_type_ids"}
FEATURES, SIZES = "vision_features", "vision_feature_sizes"
MANIFEST = "manifest.json"
TAKEN = {"projected": "after the projector", "vision": "before the projector"}
# What changes each fingerprint part, for the mismatch error.
PART_CAUSES = {
    "mode": "where the features are taken, set by student.freeze_projector",
    "dtype": "the student's dtype, set by train.precision (auto: bf16 on a GPU, fp32 on CPU)",
    "model": "the model class (student.model)",
    "config": "the model's vision and projector config (student.model)",
    "image_processor": "the image processor settings (student.image_tokens, student.model)",
    "vision_encoder": "the vision encoder's weights (student.model)",
    "projector": "the projector's weights (student.model)",
}


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


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:24]


def _module_sha(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def fingerprint_parts(model, processor, mode: str) -> dict:
    """What the cached features depend on, one hash (or value) per part; see PART_CAUSES."""
    config = base_model(model).config.to_dict()
    for key in ("text_config", "_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype"):
        config.pop(key, None)
    image_processor = getattr(processor, "image_processor", None)
    ip = image_processor.to_dict() if image_processor is not None else {}
    return {
        "mode": mode,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "model": type(base_model(model)).__name__,
        "config": _sha(json.dumps(config, sort_keys=True, default=str).encode()),
        "image_processor": _sha(json.dumps(ip, sort_keys=True, default=str).encode()),
        "vision_encoder": _module_sha(vision_encoder(model)),
        "projector": _module_sha(projector(model)) if mode == "projected" else None,
    }


def fingerprint(model, processor, mode: str) -> str:
    """sha256 over fingerprint_parts: the folder name of one student's features."""
    return _sha(json.dumps(fingerprint_parts(model, processor, mode), sort_keys=True).encode())


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
def check_exact(model, processor, image: bytes, store: FeatureStore, entry: torch.Tensor | None = None) -> torch.Tensor:
    """The live features of `image` must equal those rebuilt from its entry (the stored one, or else
    the one just computed): otherwise the family is refused rather than trained on something else.
    Also fixes store.as_list (list vs tensor pooler_output). Returns the entry."""
    proj_input, pooled = _live(model, processor, image)
    store.as_list = isinstance(pooled, (list, tuple))
    if entry is None:
        entry = _entry(store.mode, proj_input, pooled)
    device = next(model.parameters()).device
    rebuilt = pooled_from(model, store, entry.to(device), torch.tensor([entry.shape[0]]))
    live = torch.cat(list(pooled)) if store.as_list else pooled
    rebuilt = torch.cat(rebuilt) if store.as_list else rebuilt
    if rebuilt.shape != live.shape or not torch.allclose(rebuilt.float(), live.float(), atol=1e-6, rtol=1e-5):
        raise SvrdError(f"train.cache_vision_features: cached features of {type(base_model(model)).__name__} "
                        f"do not reproduce its live image features (mode {store.mode}, {store.dir})")
    return entry


@torch.no_grad()
def fill(model, processor, images: Iterable[bytes | None], store: FeatureStore) -> dict:
    """Compute the features of every image not in the store yet (vision tower in eval mode), checking
    exactness on the first. `images` is consumed lazily: one decoded image in memory at a time.
    Returns counts and `shas`, the distinct images in order of first appearance."""
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    shas: dict[str, None] = {}
    computed = 0
    try:
        for image in images:
            if image is None:
                continue
            sha = image_sha(image)
            if not shas:  # exactness, checked on the stored entry when a killed run left one
                entry = check_exact(model, processor, image, store, store.load(sha) if store.has(sha) else None)
                if not store.has(sha):
                    store.save(sha, entry)
                    computed += 1
            elif sha not in shas and not store.has(sha):
                proj_input, pooled = _live(model, processor, image)
                store.save(sha, _entry(store.mode, proj_input, pooled))
                computed += 1
            shas[sha] = None
    finally:
        model.train(was_training)
    return {"images": len(shas), "computed": computed, "reused": len(shas) - computed,
            "seconds": round(time.perf_counter() - t0, 2), "mode": store.mode, "fingerprint": store.dir.name,
            "shas": list(shas)}


def iter_images(paths: Iterable[str | Path], progress=None) -> Iterator[bytes | None]:
    """The `image` column of Parquet tables, read 64 rows at a time (never every image at once)."""
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=64, columns=["image"]):
            for image in batch.column(0).to_pylist():
                yield image
                if progress is not None:
                    progress.update(1)


def _link(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)  # the work cache and the output share the bytes
    except OSError:  # another filesystem (SVRD_CACHE_DIR elsewhere)
        shutil.copyfile(src, dest)


def write_features(model, processor, tables: dict[str, Path], out_dir: str | Path, work_root: str | Path,
                   student: str) -> dict:
    """The `features` stage on a loaded, frozen student: every distinct image of `tables` (split -> Parquet)
    into out_dir/<fingerprint>/, plus out_dir/manifest.json. Returns the manifest with this run's counts
    (computed, reused, seconds) added; the manifest itself holds only what the features depend on, so an
    unchanged re-run writes an identical folder."""
    mode = cache_mode(model)
    parts = fingerprint_parts(model, processor, mode)
    fp = fingerprint(model, processor, mode)
    work = FeatureStore(work_root, fp, mode)
    rows = {split: pq.ParquetFile(path).metadata.num_rows for split, path in tables.items()}
    with tqdm(total=sum(rows.values()), desc="features", unit="img", mininterval=1.0) as bar:
        stats = fill(model, processor, iter_images(tables.values(), bar), work)
    first = work.load(stats["shas"][0]) if stats["shas"] else None
    manifest = {
        "enabled": True,
        "student": student,
        "fingerprint": fp,
        "fingerprint_parts": parts,
        "mode": mode,
        "taken": TAKEN[mode],
        "dtype": str(first.dtype).removeprefix("torch.") if first is not None else parts["dtype"],
        "entry_shape": list(first.shape) if first is not None else None,  # of the first image
        "pooled_as_list": work.as_list,
        "image_tokens": count_image_tokens(processor),
        "rows": rows,
        "images": stats["images"],
        "bytes": sum(work.path(sha).stat().st_size for sha in stats["shas"]),
    }
    with atomic_dir(out_dir) as tmp:
        (tmp / fp).mkdir()
        for sha in sorted(stats["shas"]):
            _link(work.path(sha), tmp / fp / f"{sha}.safetensors")
        write_json(tmp / MANIFEST, manifest)
    return {**manifest, "computed": stats["computed"], "reused": stats["reused"], "seconds": stats["seconds"]}


def write_disabled(out_dir: str | Path) -> dict:
    """train.cache_vision_features false: the folder holds only a manifest saying so (no model is loaded)."""
    manifest = {"enabled": False, "why": "train.cache_vision_features is false: distill reads pixel_values"}
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / MANIFEST, manifest)
    return manifest


def open_features(root: str | Path, model, processor) -> FeatureStore:
    """The features folder for the student distill trains; SvrdError, naming the mismatch, when it was
    written for another student, for other freezing, or with the cache off."""
    root = Path(root)
    redo = "re-run `dvc repro features` (dvc repro and dvc exp run do so when its params change)"
    if not (root / MANIFEST).is_file():
        raise SvrdError(f"train.cache_vision_features: {root} has no {MANIFEST}; {redo}")
    manifest = read_json(root / MANIFEST)
    if not manifest.get("enabled"):
        raise SvrdError(f"train.cache_vision_features is true but {root} was written with it false "
                        f"(its manifest says disabled); {redo}")
    mode = cache_mode(model)  # the vision encoder must still be frozen
    fp = fingerprint(model, processor, mode)
    if manifest["fingerprint"] != fp:
        parts, theirs = fingerprint_parts(model, processor, mode), manifest.get("fingerprint_parts", {})
        differ = [part for part in PART_CAUSES if theirs.get(part) != parts[part]]
        if "mode" in differ:
            differ = ["mode"]  # the other parts follow from it (the projector is hashed in one mode only)
        why = "; ".join(
            (f"features taken {TAKEN[theirs['mode']]} ({theirs['mode']}), but the student's projector "
             f"{'is frozen' if mode == 'projected' else 'trains'} now ({PART_CAUSES['mode']})")
            if part == "mode" else
            f"{part} differs: {theirs.get(part)} vs {parts[part]} ({PART_CAUSES[part]})"
            for part in differ) or "the fingerprints differ"
        raise SvrdError(f"train.cache_vision_features: {root} holds the features of another student than the one "
                        f"distill trains (fingerprint {manifest['fingerprint']}, student {manifest.get('student')!r}; "
                        f"this student: {fp}): {why}; {redo}")
    store = FeatureStore(root, fp, mode)
    store.as_list = manifest["pooled_as_list"]
    return store


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
    """Open the features folder (written by the `features` stage) for this student, check it covers every
    image and reproduces the live features, and return (train dataset, val dataset or None, hook handle, stats)."""
    t0 = time.perf_counter()
    store = open_features(root, model, processor)
    images = {image_sha(ex.image): ex.image for ex in [*train_examples, *val_examples] if ex.image is not None}
    missing = [sha for sha in images if not store.has(sha)]
    if missing:
        raise SvrdError(f"train.cache_vision_features: {len(missing)} of {len(images)} train/val images have no "
                        f"features in {store.dir} (written from other split tables?); re-run `dvc repro features`")
    if images:
        sha, image = next(iter(images.items()))
        was_training = model.training
        model.eval()
        try:
            check_exact(model, processor, image, store, store.load(sha))
        finally:
            model.train(was_training)
    stats = {"dir": str(root), "images": len(images), "mode": store.mode, "fingerprint": store.dir.name,
             "seconds": round(time.perf_counter() - t0, 2)}
    log.info("vision features: %s", stats)
    train_ds = CachedFeatureDataset(processor, train_examples, max_length, store)
    val_ds = CachedFeatureDataset(processor, val_examples, max_length, store) if val_examples else None
    return train_ds, val_ds, install(model, store), stats
