"""split: train / val / test tables with disjoint pids.

`official` keeps the release's split; `stratified` redraws it by topic, seeded
(see `assign_stratified`). Training is capped to the first `max_train` questions in release order (the paper
trained on the first 2000).
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from svrd.errors import LeakageError, SvrdError
from svrd.io import atomic_path, read_table, write_table

SPLITS = ("train", "val", "test")


def assign_stratified(table: pa.Table, fractions: tuple[float, float, float], seed: int) -> list[str]:
    """A seeded split stratified by topic, any topic size (one-member topics included).

    Systematic stratified sampling: questions are laid out topic by topic (topics and the
    questions within each shuffled by `seed`) and dealt to train/val/test in turn, each next
    question going to the split furthest below its share so far. Every prefix of the layout,
    hence the whole table and every topic's block, is then split in the given fractions to
    within a question or two. (scikit-learn's `train_test_split(stratify=…)` refuses topics
    with one member and tables with more topics than a split has rows.)
    """
    n = table.num_rows
    topics = [str(t) for t in table.column("topic").to_pylist()]
    rng = np.random.default_rng(seed)
    by_topic: dict[str, list[int]] = {}
    for i, topic in enumerate(topics):
        by_topic.setdefault(topic, []).append(i)
    order: list[int] = []
    for topic in rng.permutation(sorted(by_topic)):
        members = by_topic[str(topic)]
        order.extend(members[j] for j in rng.permutation(len(members)))
    shares = np.asarray(fractions, dtype=float) / float(sum(fractions))
    counts = np.zeros(len(SPLITS))
    assigned = [""] * n
    for k, i in enumerate(order, start=1):
        s = int(np.argmax(shares * k - counts))  # the split furthest below its share
        counts[s] += 1
        assigned[i] = SPLITS[s]
    return assigned


def assign_splits(meta: pa.Table, strategy: str, fractions: tuple[float, float, float], seed: int) -> list[str]:
    """The split of every row of `meta` (which needs the `split` and `topic` columns)."""
    if strategy == "official":
        assigned = meta.column("split").to_pylist()
        unknown = sorted({str(s) for s in assigned if s not in SPLITS})
        if unknown:
            raise SvrdError(f"split: official split names must be train/val/test, found {unknown}")
        return assigned
    if strategy == "stratified":
        return assign_stratified(meta, fractions, seed)
    raise ValueError(f"unknown split.strategy {strategy!r}")


def apply_caps(assigned: list[str], caps: dict[str, int | None]) -> list[str | None]:
    """Keep the first N of each split in release order ("the first 2000"); None marks a dropped row."""
    seen = dict.fromkeys(SPLITS, 0)
    kept: list[str | None] = []
    for name in assigned:
        seen[name] += 1
        cap = caps.get(name)
        kept.append(name if cap is None or seen[name] <= cap else None)
    return kept


def split_table(
    table: pa.Table,
    strategy: str = "official",
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    max_train: int | None = None,
    max_val: int | None = None,
    max_test: int | None = None,
) -> dict[str, pa.Table]:
    """In memory: the filtered table in, one table per split out."""
    kept = apply_caps(assign_splits(table, strategy, fractions, seed),
                      {"train": max_train, "val": max_val, "test": max_test})
    table = table.set_column(table.schema.get_field_index("split"), "split", pa.array(kept, pa.string()))
    out = {name: table.filter(pc.equal(table.column("split"), name)) for name in SPLITS}
    check_disjoint({k: v.column("pid").to_pylist() for k, v in out.items()})
    return out


def split_file(
    src: str | Path,
    out_dir: str | Path,
    strategy: str = "official",
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    max_train: int | None = None,
    max_val: int | None = None,
    max_test: int | None = None,
) -> dict[str, int]:
    """Streaming: decides on the pid/split/topic columns alone, then copies rows batch by batch
    into the three split files, so peak memory is about one row group of images, not the table."""
    meta = pq.read_table(src, columns=["pid", "split", "topic"])
    kept = apply_caps(assign_splits(meta, strategy, fractions, seed),
                      {"train": max_train, "val": max_val, "test": max_test})
    pids = meta.column("pid").to_pylist()
    check_disjoint({name: [p for p, k in zip(pids, kept, strict=True) if k == name] for name in SPLITS})
    source = pq.ParquetFile(src, pre_buffer=False)
    split_index = source.schema_arrow.get_field_index("split")
    counts: dict = dict.fromkeys(SPLITS, 0)
    keys: list[str] = []
    with contextlib.ExitStack() as stack:
        writers = {}
        for name in SPLITS:
            tmp = stack.enter_context(atomic_path(Path(out_dir) / f"{name}.parquet", suffix=".parquet"))
            writers[name] = stack.enter_context(pq.ParquetWriter(tmp, source.schema_arrow, compression="zstd"))
        offset = 0
        # Row group by row group (filter writes one per batch): pyarrow's iter_batches reads ahead
        # and held about 1.7x the table's size in memory on a 1.4 GiB table.
        for group in range(source.num_row_groups):
            table = source.read_row_group(group)
            names = kept[offset:offset + table.num_rows]
            offset += table.num_rows
            table = table.set_column(split_index, "split", pa.array(names, pa.string()))
            keys.extend(content_keys(table))
            for name in SPLITS:
                part = table.filter(pa.array([n == name for n in names]))
                if part.num_rows:
                    writers[name].write_table(part)
                    counts[name] += part.num_rows
    counts["duplicates"] = cross_split_duplicates(pids, kept, keys)
    return counts


CONTENT_FIELDS = ("question", "choices", "hint", "image")


def content_key(question: str, choices: list[str], hint: str | None, image: bytes | None) -> str:
    """What a student sees of a question, hashed: the question, its options (as a set: a twin whose
    options are shuffled is still a twin), the hint and the image bytes (filter writes every image as
    the same RGB PNG encoding, so equal pixels are equal bytes)."""
    h = hashlib.sha256()
    for part in (question.strip(), "\x1f".join(sorted(c.strip() for c in choices)), (hint or "").strip()):
        h.update(part.encode("utf-8") + b"\x1e")
    h.update(hashlib.sha256(image or b"").digest())
    return h.hexdigest()


def content_keys(table: pa.Table) -> list[str]:
    n = table.num_rows
    empty = {"question": [""] * n, "choices": [[]] * n, "hint": [None] * n, "image": [None] * n}
    columns = [table.column(f).to_pylist() if f in table.column_names else empty[f] for f in CONTENT_FIELDS]
    return [content_key(*row) for row in zip(*columns, strict=True)]


def cross_split_duplicates(pids: list[str], kept: list[str | None], keys: list[str]) -> dict:
    """Questions of a later split (val, test) whose content already occurs in an earlier one (train,
    val): a memorised twin inflates held-out accuracy. Counts, and up to 10 (pid, twin pid) examples."""
    first: dict[str, dict[str, str]] = {name: {} for name in SPLITS}
    for pid, name, key in zip(pids, kept, keys, strict=True):
        if name is not None:
            first[name].setdefault(key, pid)
    out: dict = {}
    examples: list[list[str]] = []
    for later, earlier in (("test", "train"), ("test", "val"), ("val", "train")):
        twins = [(pid, first[earlier][key]) for pid, name, key in zip(pids, kept, keys, strict=True)
                 if name == later and key in first[earlier]]
        out[f"{later}_in_{earlier}"] = len(twins)
        examples.extend([list(t) for t in twins][: 10 - len(examples)])
    out["examples"] = examples
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
