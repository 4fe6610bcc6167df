"""split: train / val / test tables with disjoint pids.

`official` keeps the release's split; `stratified` redraws it by topic with scikit-learn,
seeded. Training is capped to the first `max_train` questions in release order (the paper
trained on the first 2000).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from svrd.errors import LeakageError
from svrd.io import read_table, write_table

SPLITS = ("train", "val", "test")


def _stratify_labels(topics: list[str], min_count: int) -> list[str]:
    # scikit-learn cannot stratify a class with fewer members than splits need: pool rare topics.
    counts = Counter(topics)
    return [t if counts[t] >= min_count else "(rare topics)" for t in topics]


def assign_stratified(table: pa.Table, fractions: tuple[float, float, float], seed: int) -> list[str]:
    from sklearn.model_selection import train_test_split

    n = table.num_rows
    idx = list(range(n))
    topics = table.column("topic").to_pylist()
    f_train, f_val, f_test = fractions
    labels = _stratify_labels(topics, 4)
    strat = labels if len(set(labels)) > 1 and min(Counter(labels).values()) >= 2 else None
    train_idx, rest_idx = train_test_split(idx, train_size=f_train, random_state=seed, stratify=strat)
    rest_labels = [labels[i] for i in rest_idx]
    rest_labels = _stratify_labels(rest_labels, 2)
    strat_rest = rest_labels if len(set(rest_labels)) > 1 and min(Counter(rest_labels).values()) >= 2 else None
    val_idx, test_idx = train_test_split(
        rest_idx, test_size=f_test / (f_val + f_test), random_state=seed, stratify=strat_rest
    )
    assigned = [""] * n
    for name, chosen in (("train", train_idx), ("val", val_idx), ("test", test_idx)):
        for i in chosen:
            assigned[i] = name
    return assigned


def split_table(
    table: pa.Table,
    strategy: str = "official",
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    max_train: int | None = None,
    max_val: int | None = None,
    max_test: int | None = None,
) -> dict[str, pa.Table]:
    if strategy == "official":
        assigned = table.column("split").to_pylist()
    elif strategy == "stratified":
        assigned = assign_stratified(table, fractions, seed)
    else:
        raise ValueError(f"unknown split.strategy {strategy!r}")
    table = table.set_column(table.schema.get_field_index("split"), "split", pa.array(assigned, pa.string()))
    caps = {"train": max_train, "val": max_val, "test": max_test}
    out = {}
    for name in SPLITS:
        part = table.filter(pc.equal(table.column("split"), name))
        if caps[name] is not None:
            part = part.slice(0, caps[name])  # release order: "the first N"
        out[name] = part
    check_disjoint({k: v.column("pid").to_pylist() for k, v in out.items()})
    return out


def check_disjoint(pids_by_split: dict[str, list[str]]) -> None:
    seen: dict[str, str] = {}
    for name, pids in pids_by_split.items():
        for pid in pids:
            if pid in seen:
                raise LeakageError(f"pid {pid} is in both the {seen[pid]} and the {name} split")
            seen[pid] = name


def refuse_test_pids(pids, split_of_pid: dict[str, str] | None = None, splits=None, stage: str = "") -> None:
    """Raise LeakageError if any pid belongs to the test split (teach and distill call this)."""
    for i, pid in enumerate(pids):
        split = splits[i] if splits is not None else (split_of_pid or {}).get(pid)
        if split == "test":
            raise LeakageError(f"{stage}: pid {pid} is a test question and must never reach {stage}")


def write_splits(parts: dict[str, pa.Table], out_dir: str | Path) -> dict[str, int]:
    for name, part in parts.items():
        write_table(Path(out_dir) / f"{name}.parquet", part)
    return {name: part.num_rows for name, part in parts.items()}


def read_split(split_dir: str | Path, name: str, columns: list[str] | None = None) -> pa.Table:
    return read_table(Path(split_dir) / f"{name}.parquet", columns)
