"""Readers for the three data sources, all yielding raw problem records keyed by pid.

- `scienceqa` (and the generated `sample`): ScienceQA's original release layout:
  problems.json, pid_splits.json, captions.json, images/{split}/{pid}/{image}.
  Whether a question has an image is decided by its `image` field, never by the folder
  (some release folders hold only choice_N.png files while `image` is null).
- `hf`: a Hugging Face copy (`derek-thomas/ScienceQA`, `lmms-lab/ScienceQA`), a local dataset
  folder saved with `save_to_disk`, or Parquet files, with the 13 ScienceQA columns and no pid.
  Stable id rule: pid = "hf-{split}-{row:06d}", split in train/val/test (Hugging Face's
  "validation" is renamed "val") and row the 0-based index within that split as published.

Records come out raw: `image` holds the undecoded file bytes (or None), validation is filter's job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from svrd.errors import RecordError, SvrdError
from svrd.records import SCIENCEQA_FIELDS

HF_SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except UnicodeDecodeError as exc:
        raise SvrdError(f"{path}: not valid UTF-8 JSON ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise SvrdError(f"{path}: not valid JSON ({exc})") from None


def count_release(path: str | Path) -> int:
    return len(_load_json(Path(path) / "problems.json"))


def iter_release(path: str | Path) -> Iterator[dict]:
    """Yield records of a release folder in problems.json order, with pid, split and caption."""
    root = Path(path)
    problems_file = root / "problems.json"
    if not problems_file.is_file():
        raise SvrdError(f"{root}: no problems.json here; data.path must be a ScienceQA release folder")
    problems = _load_json(problems_file)
    split_of: dict[str, str] = {}
    if (root / "pid_splits.json").is_file():
        for split in ("train", "val", "test"):
            for pid in _load_json(root / "pid_splits.json").get(split, []):
                split_of[str(pid)] = split
    captions = _load_json(root / "captions.json").get("captions", {}) if (root / "captions.json").is_file() else {}
    images_root = (root / "images").resolve()

    for pid, raw in problems.items():
        pid = str(pid)
        if not isinstance(raw, dict):
            raise RecordError(pid, "record", f"expected an object, got {type(raw).__name__}")
        rec = {field: raw.get(field) for field in SCIENCEQA_FIELDS}
        rec["pid"] = pid
        rec["split"] = raw.get("split") or split_of.get(pid)
        if rec["split"] not in ("train", "val", "test"):
            raise RecordError(pid, "split", f"unknown split {rec['split']!r} (and the pid is not in pid_splits.json)")
        rec["caption"] = captions.get(pid, "")
        rec["image"] = _read_release_image(images_root, rec["split"], pid, raw.get("image"))
        yield rec


def _read_release_image(images_root: Path, split: str, pid: str, name) -> bytes | None:
    if name is None or name == "":
        return None
    if not isinstance(name, str):
        raise RecordError(pid, "image", f"expected a file name, got {type(name).__name__}")
    path = (images_root / split / pid / name).resolve()
    # The image field is data, not a path we trust: it must not leave the dataset folder.
    if not path.is_relative_to(images_root / split / pid):
        raise RecordError(pid, "image", f"path {name!r} leaves the dataset folder")
    if not path.is_file():
        raise RecordError(pid, "image", f"file not found: {path}")
    return path.read_bytes()


def _open_hf(path: str, config: str | None):
    """Open a Hugging Face copy as a DatasetDict: Parquet files, a saved folder, or a Hub id."""
    import datasets

    local = Path(path)
    if local.is_file() and local.suffix == ".parquet" or local.is_dir() and not (local / "dataset_dict.json").exists() and list(local.glob("**/*.parquet")):
        files = [local] if local.is_file() else sorted(local.glob("**/*.parquet"))
        by_split: dict[str, list[str]] = {}
        for f in files:
            # File names like test-00000-of-00001.parquet or test.parquet carry the split.
            stem = f.stem.split("-")[0]
            split = stem if stem in HF_SPLIT_NAMES else f.parent.name
            if split not in HF_SPLIT_NAMES:
                raise SvrdError(f"{f}: cannot tell the split from the file name (expected train/validation/test)")
            by_split.setdefault(split, []).append(str(f))
        return datasets.load_dataset("parquet", data_files=by_split)
    if local.is_dir():
        return datasets.load_from_disk(str(local))
    return datasets.load_dataset(path, config)


def iter_hf(path: str, config: str | None = None) -> Iterator[dict]:
    import datasets

    dsd = _open_hf(path, config)
    for hf_split in dsd:
        if hf_split not in HF_SPLIT_NAMES:
            continue
        ds = dsd[hf_split]
        missing = [c for c in SCIENCEQA_FIELDS if c not in ds.column_names]
        if missing:
            raise RecordError(None, missing[0], f"column missing from the {hf_split} split of {path} (missing: {missing})")
        if isinstance(ds.features.get("image"), datasets.Image):
            ds = ds.cast_column("image", datasets.Image(decode=False))  # raw bytes; filter decodes once
        split = HF_SPLIT_NAMES[hf_split]
        for row_index, raw in enumerate(ds):
            rec = {field: raw.get(field) for field in SCIENCEQA_FIELDS}
            rec["pid"] = f"hf-{split}-{row_index:06d}"
            rec["split"] = split
            rec["caption"] = raw.get("caption") or ""
            image = raw.get("image")
            if isinstance(image, dict):
                image = image.get("bytes") or (Path(image["path"]).read_bytes() if image.get("path") else None)
            rec["image"] = image
            yield rec
