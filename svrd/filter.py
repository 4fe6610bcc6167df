"""filter: read a source, keep image questions, validate every record, write one Parquet table.

Streams: records are read, validated and written in batches, so at most one batch of
decoded images is in memory whatever the dataset size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from svrd.errors import RecordError
from svrd.images import normalize_image
from svrd.io import atomic_path, write_jsonl
from svrd.records import PROBLEM_COLUMNS, PROBLEM_SCHEMA, validate_record

BATCH_ROWS = 256


@dataclass
class FilterSummary:
    read: int = 0
    kept: int = 0
    without_image: int = 0
    rejected: int = 0
    by_split: dict = field(default_factory=dict)
    rejects: list = field(default_factory=list)

    def line(self) -> str:
        splits = " ".join(f"{k}={v}" for k, v in sorted(self.by_split.items()))
        return (
            f"filter: read {self.read}, kept {self.kept} ({splits}), "
            f"dropped {self.without_image} without image, rejected {self.rejected}"
        )


def clean_record(raw: dict, images_only: bool, max_image_pixels: int) -> dict | None:
    """Validate one raw record; None when it is filtered out (no image and images_only).

    A record filtered out is not validated: a flaw in a question we drop anyway must not stop
    the run. Whether it has an image is its `image` field (None: no image)."""
    if images_only and raw.get("image") is None:
        return None
    rec = validate_record(raw)
    if rec.get("image") is not None:
        rec["image"] = normalize_image(rec["image"], rec["pid"], "image", max_image_pixels)
    return {col: rec.get(col) for col in PROBLEM_COLUMNS}


def filter_records(
    records: Iterable[dict | RecordError],
    out_table: str | Path,
    rejects_file: str | Path,
    images_only: bool = True,
    on_invalid: str = "error",
    max_image_pixels: int = 25_000_000,
    total: int | None = None,
) -> FilterSummary:
    """Write the filtered table atomically; on_invalid='error' raises on the first bad record
    (leaving no new output), 'skip' lists bad records with reasons in `rejects_file`.

    `records` yields raw records, or RecordError instances for records the reader itself found
    bad (see svrd.sources). An exception *raised* by the reader means the whole source is
    unreadable and always stops the run.
    """
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    summary = FilterSummary()
    seen: set[str] = set()
    batch: list[dict] = []

    def reject(exc: RecordError) -> None:
        if on_invalid == "error":
            raise exc
        summary.rejected += 1
        summary.rejects.append(exc.as_reject())

    with atomic_path(out_table, suffix=".parquet") as tmp, \
            tqdm(total=total, desc="filter", unit="q", mininterval=1.0) as progress:
        writer = pq.ParquetWriter(tmp, PROBLEM_SCHEMA, compression="zstd")
        try:
            for raw in records:
                summary.read += 1
                progress.update()
                if isinstance(raw, RecordError):  # the reader rejected it (missing image, bad path)
                    reject(raw)
                    continue
                try:
                    if not isinstance(raw, dict):
                        raise RecordError(None, "record", f"expected a record, got {type(raw).__name__}")
                    pid = raw.get("pid")
                    if pid is not None and str(pid).strip():
                        if str(pid) in seen:
                            raise RecordError(str(pid), "pid", "duplicate pid (appears more than once in the source)")
                        seen.add(str(pid))
                    rec = clean_record(raw, images_only, max_image_pixels)
                except RecordError as exc:
                    reject(exc)
                    continue
                if rec is None:
                    summary.without_image += 1
                    continue
                batch.append(rec)
                summary.kept += 1
                summary.by_split[rec["split"]] = summary.by_split.get(rec["split"], 0) + 1
                if len(batch) >= BATCH_ROWS:
                    writer.write_table(pa.Table.from_pylist(batch, schema=PROBLEM_SCHEMA))
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=PROBLEM_SCHEMA))
        finally:
            writer.close()
    write_jsonl(rejects_file, summary.rejects)
    return summary


def open_source(source: str, path: str, hf_config: str | None = None):
    """(records iterator, total or None) for a data source."""
    from svrd import sources

    if source in ("sample", "scienceqa"):
        return sources.iter_release(path), sources.count_release(path)
    if source == "hf":
        return sources.iter_hf(path, hf_config), None
    raise ValueError(f"unknown data.source {source!r}")
