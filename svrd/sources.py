"""Readers for the three data sources, all yielding raw problem records keyed by pid.

- `scienceqa` (and the generated `sample`): ScienceQA's original release layout:
  problems.json, pid_splits.json, captions.json, images/{split}/{pid}/{image}.
  Whether a question has an image is decided by its `image` field, never by the folder
  (some release folders hold only choice_N.png files while `image` is null).
- `hf`: a Hugging Face copy (`derek-thomas/ScienceQA`, `lmms-lab/ScienceQA`), a local dataset
  folder saved with `save_to_disk`, or Parquet files (a folder of them or one file), with the
  13 ScienceQA columns and no pid.
  Stable id rule: pid = "hf-{split}-{row:06d}", split in train/val/test (Hugging Face's
  "validation" is renamed "val") and row the 0-based index within that split as published
  (Parquet shards of one split are counted in file-name order, as the Hub lists them).

Records come out raw: `image` holds the undecoded file bytes (or None), validation is filter's job.

Errors: a problem with one record (its image file is missing, its `image` field points outside
its folder, its split is unknown) is *yielded* as a RecordError in the record's place, so a
reader can go on past it (filter's on_invalid=skip). A problem with the whole source (no
problems.json, a column missing from a Hugging Face copy) is *raised*: nothing can be read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from svrd.errors import RecordError, SvrdError
from svrd.records import SCIENCEQA_FIELDS

HF_SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
SPLIT_ORDER = ("train", "val", "test")
PARQUET_BATCH_ROWS = 256


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise SvrdError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise SvrdError(f"{path}: not valid UTF-8 JSON ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise SvrdError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SvrdError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _problems_file(path: str | Path) -> Path:
    root = Path(path)
    problems_file = root / "problems.json"
    if not problems_file.is_file():
        raise SvrdError(f"{root}: no problems.json here; data.path must be a ScienceQA release folder")
    return problems_file


def count_release(path: str | Path) -> int:
    return len(_load_json(_problems_file(path)))


def iter_release(path: str | Path) -> Iterator[dict | RecordError]:
    """Yield records of a release folder in problems.json order, with pid, split and caption."""
    root = Path(path)
    problems = _load_json(_problems_file(root))
    split_of: dict[str, str] = {}
    if (root / "pid_splits.json").is_file():
        pid_splits = _load_json(root / "pid_splits.json")
        for split in SPLIT_ORDER:
            for pid in pid_splits.get(split) or []:
                split_of[str(pid)] = split
    captions = _load_json(root / "captions.json").get("captions", {}) if (root / "captions.json").is_file() else {}
    images_root = (root / "images").resolve()

    for pid, raw in problems.items():
        pid = str(pid)
        try:
            yield _release_record(pid, raw, split_of, captions, images_root)
        except RecordError as exc:
            yield exc


def _release_record(pid: str, raw, split_of: dict, captions: dict, images_root: Path) -> dict:
    if not isinstance(raw, dict):
        raise RecordError(pid, "record", f"expected an object, got {type(raw).__name__}")
    rec = {field: raw.get(field) for field in SCIENCEQA_FIELDS}
    rec["pid"] = pid
    rec["split"] = raw.get("split") or split_of.get(pid)
    if rec["split"] not in SPLIT_ORDER:
        raise RecordError(pid, "split", f"unknown split {rec['split']!r} (and the pid is not in pid_splits.json)")
    caption = captions.get(pid, "") if isinstance(captions, dict) else ""
    rec["caption"] = caption
    rec["image"] = _read_release_image(images_root, rec["split"], pid, raw.get("image"))
    return rec


def _read_release_image(images_root: Path, split: str, pid: str, name) -> bytes | None:
    if name is None or name == "":
        return None
    if not isinstance(name, str):
        raise RecordError(pid, "image", f"expected a file name, got {type(name).__name__}")
    folder = images_root / split / pid
    path = (folder / name).resolve()
    # The image field (and the pid) is data, not a path we trust: it must not leave the pid's folder.
    if "\x00" in name or not path.is_relative_to(folder.resolve()) or not folder.resolve().is_relative_to(images_root):
        raise RecordError(pid, "image", f"path {name!r} leaves the dataset folder")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RecordError(pid, "image", f"file not found: {path}") from None
    except OSError as exc:
        raise RecordError(pid, "image", f"cannot read {path} ({exc.strerror or exc})") from None


# --- Hugging Face copies --------------------------------------------------------------------


def _parquet_split(f: Path) -> str:
    # File names like test-00000-of-00001.parquet, test-00000-of-00001-<hash>.parquet or
    # test.parquet carry the split; otherwise a folder named after it may.
    stem = f.stem.split("-")[0].split(".")[0]
    if stem in HF_SPLIT_NAMES:
        return HF_SPLIT_NAMES[stem]
    if f.parent.name in HF_SPLIT_NAMES:
        return HF_SPLIT_NAMES[f.parent.name]
    raise SvrdError(f"{f}: cannot tell the split from the file name (expected train/validation/test-…parquet)")


def _parquet_files(local: Path) -> dict[str, list[Path]] | None:
    """split -> Parquet files (in name order) for a Parquet file or a folder of them; None otherwise."""
    if local.is_file() and local.suffix == ".parquet":
        files = [local]
    elif local.is_dir() and not (local / "dataset_dict.json").exists() and not (local / "state.json").exists():
        files = sorted(local.glob("**/*.parquet"))
        if not files:
            return None
    else:
        return None
    by_split: dict[str, list[Path]] = {}
    for f in files:
        by_split.setdefault(_parquet_split(f), []).append(f)
    return {split: by_split[split] for split in SPLIT_ORDER if split in by_split}


def _check_columns(names, where: str) -> None:
    missing = [c for c in SCIENCEQA_FIELDS if c not in names]
    if missing:
        raise RecordError(None, missing[0], f"column missing from {where} (missing: {', '.join(missing)})")


def _hf_record(raw: dict, split: str, row_index: int) -> dict | RecordError:
    pid = f"hf-{split}-{row_index:06d}"
    rec = {field: raw.get(field) for field in SCIENCEQA_FIELDS}
    rec["pid"] = pid
    rec["split"] = split
    rec["caption"] = raw.get("caption") or ""
    image = raw.get("image")
    if isinstance(image, dict):  # the datasets Image feature, undecoded: {bytes, path}
        if image.get("bytes") is not None:
            image = image["bytes"]
        elif image.get("path"):
            try:
                image = Path(image["path"]).read_bytes()
            except OSError as exc:
                return RecordError(pid, "image", f"cannot read {image['path']} ({exc.strerror or exc})")
        else:
            image = None
    rec["image"] = image
    return rec


def _iter_parquet(by_split: dict[str, list[Path]]) -> Iterator[dict | RecordError]:
    import pyarrow.parquet as pq

    for split, files in by_split.items():
        row_index = 0
        for f in files:
            pf = pq.ParquetFile(f)
            _check_columns(pf.schema_arrow.names, f"{f}")
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                for raw in batch.to_pylist():
                    yield _hf_record(raw, split, row_index)
                    row_index += 1


def _looks_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith(".") or path.endswith(".parquet") or path.count("/") > 1


def _open_hf(path: str, config: str | None):
    """A DatasetDict (or a Dataset) for a saved folder or a Hub id."""
    import datasets

    local = Path(path)
    try:
        if local.is_dir():
            return datasets.load_from_disk(str(local))
        return datasets.load_dataset(path, config)
    except Exception as exc:  # the datasets library raises many types (network, format, not found)
        raise SvrdError(f"{path}: cannot load the Hugging Face dataset ({type(exc).__name__}: {exc})") from None


def iter_hf(path: str, config: str | None = None) -> Iterator[dict | RecordError]:
    """Yield records of a Hugging Face copy, split by split (train, val, test), pids by the rule above."""
    local = Path(path)
    if not local.exists() and _looks_local(str(path)):
        raise SvrdError(f"{path}: not found (data.path must be a dataset id, a local dataset folder or Parquet files)")
    by_split = _parquet_files(local)
    if by_split is not None:
        yield from _iter_parquet(by_split)
        return

    import datasets

    dsd = _open_hf(path, config)
    if isinstance(dsd, datasets.Dataset):
        name = str(dsd.split) if dsd.split is not None else None
        if name not in HF_SPLIT_NAMES:
            raise SvrdError(f"{path}: a single dataset with no known split; save a DatasetDict with "
                            f"train/validation/test splits")
        dsd = {name: dsd}
    splits = sorted((s for s in dsd if s in HF_SPLIT_NAMES), key=lambda s: SPLIT_ORDER.index(HF_SPLIT_NAMES[s]))
    if not splits:
        raise SvrdError(f"{path}: no train/validation/test split (found: {', '.join(dsd) or 'none'})")
    for hf_split in splits:
        ds = dsd[hf_split]
        _check_columns(ds.column_names, f"the {hf_split} split of {path}")
        if isinstance(ds.features.get("image"), datasets.Image):
            ds = ds.cast_column("image", datasets.Image(decode=False))  # raw bytes; filter decodes once
        split = HF_SPLIT_NAMES[hf_split]
        for row_index, raw in enumerate(ds):
            yield _hf_record(raw, split, row_index)
