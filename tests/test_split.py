"""split: official and stratified strategies, caps in release order, seeds, rare topics."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pytest
from fixture_data import scienceqa_sample

from svrd.errors import SvrdError
from svrd.split import assign_stratified, read_split, split_table, write_splits

SAMPLE = scienceqa_sample()
FRACTIONS = (0.7, 0.1, 0.2)


def table_of(pids, topics, splits=None) -> pa.Table:
    n = len(pids)
    return pa.table({"pid": [str(p) for p in pids], "split": splits or ["train"] * n, "topic": topics,
                     "question": [f"q{p}" for p in pids]})


@pytest.fixture(scope="module")
def sample_table() -> pa.Table:
    problems = json.loads((SAMPLE / "problems.json").read_text())
    return table_of(list(problems), [r["topic"] for r in problems.values()], [r["split"] for r in problems.values()])


def sizes(parts):
    return {k: v.num_rows for k, v in parts.items()}


def test_official_keeps_release_split(sample_table):
    parts = split_table(sample_table, "official")
    assert sizes(parts) == {"train": 1041, "val": 371, "test": 361}


def test_official_rejects_unknown_split_names():
    with pytest.raises(SvrdError, match="trainval"):
        split_table(table_of([1, 2], ["a", "a"], ["train", "trainval"]), "official")


@pytest.mark.parametrize("fractions", [FRACTIONS, (0.8, 0.1, 0.1), (0.34, 0.33, 0.33)])
def test_stratified_disjoint_and_fractions(sample_table, fractions):
    n = sample_table.num_rows
    parts = split_table(sample_table, "stratified", fractions, seed=0)
    pids = [set(p.column("pid").to_pylist()) for p in parts.values()]
    assert sum(len(p) for p in pids) == n and len(set.union(*pids)) == n  # a partition: disjoint, complete
    for part, frac in zip(parts.values(), fractions, strict=True):
        assert abs(part.num_rows - frac * n) <= 2
    assert all(set(p.column("split").to_pylist()) == {name} for name, p in parts.items())


def test_stratified_by_topic(sample_table):
    parts = split_table(sample_table, "stratified", FRACTIONS, seed=3)
    total = Counter(sample_table.column("topic").to_pylist())
    for name, frac in zip(parts, FRACTIONS, strict=True):
        got = Counter(parts[name].column("topic").to_pylist())
        for topic, count in total.items():
            assert abs(got[topic] - frac * count) <= 2, (name, topic, got[topic], count)


def test_stratified_is_seeded(sample_table):
    a = assign_stratified(sample_table, FRACTIONS, seed=0)
    assert a == assign_stratified(sample_table, FRACTIONS, seed=0)
    b = assign_stratified(sample_table, FRACTIONS, seed=1)
    assert a != b
    assert Counter(a) == Counter(b)  # same sizes, different members


@pytest.mark.parametrize("n_rare", [1, 2, 3])
def test_rare_topics_do_not_crash(n_rare):
    topics = ["common"] * 40 + [f"rare{i}" for i in range(5) for _ in range(n_rare)]
    table = table_of(range(len(topics)), topics)
    for seed in range(5):
        parts = split_table(table, "stratified", FRACTIONS, seed=seed)
        assert sum(sizes(parts).values()) == len(topics)
        for part, frac in zip(parts.values(), FRACTIONS, strict=True):
            assert abs(part.num_rows - frac * len(topics)) <= 2


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_tiny_tables(n):
    parts = split_table(table_of(range(n), [f"t{i}" for i in range(n)]), "stratified", FRACTIONS, seed=0)
    assert sum(sizes(parts).values()) == n


def test_caps_take_the_first_in_release_order(sample_table):
    parts = split_table(sample_table, "official", max_train=100, max_val=10, max_test=None)
    train_release = [p for p, s in zip(sample_table.column("pid").to_pylist(),
                                       sample_table.column("split").to_pylist(), strict=True) if s == "train"]
    assert parts["train"].column("pid").to_pylist() == train_release[:100]
    assert sizes(parts) == {"train": 100, "val": 10, "test": 361}
    strat = split_table(sample_table, "stratified", FRACTIONS, seed=0, max_train=50)
    full = split_table(sample_table, "stratified", FRACTIONS, seed=0)
    assert strat["train"].column("pid").to_pylist() == full["train"].column("pid").to_pylist()[:50]
    order = {p: i for i, p in enumerate(sample_table.column("pid").to_pylist())}
    positions = [order[p] for p in full["train"].column("pid").to_pylist()]
    assert positions == sorted(positions)  # release order kept


def test_unknown_strategy(sample_table):
    with pytest.raises(ValueError, match="strategy"):
        split_table(sample_table, "random")


def test_write_and_read_splits(sample_table, tmp_path):
    counts = write_splits(split_table(sample_table, "official", max_train=10), tmp_path)
    assert counts["train"] == 10
    assert read_split(tmp_path, "train", ["pid"]).num_rows == 10
    assert read_split(tmp_path, "train", ["pid"]).column_names == ["pid"]  # only the columns asked for


@pytest.mark.parametrize("strategy", ["official", "stratified"])
def test_streaming_split_file_equals_the_in_memory_split(sample_table, strategy, tmp_path):
    """The stage streams batch by batch; it must write exactly what split_table computes."""
    import pyarrow.parquet as pq

    from svrd.split import split_file

    pq.write_table(sample_table, tmp_path / "problems.parquet", row_group_size=4)  # several groups
    caps = dict(max_train=7, max_val=None, max_test=3)
    counts = split_file(tmp_path / "problems.parquet", tmp_path / "out", strategy, (0.6, 0.2, 0.2), 1, **caps)
    expected = split_table(sample_table, strategy, (0.6, 0.2, 0.2), 1, **caps)
    for name, part in expected.items():
        assert pq.read_table(tmp_path / "out" / f"{name}.parquet").equals(part)
        assert counts[name] == part.num_rows


def _content_table(rows) -> pa.Table:
    cols = ("pid", "split", "topic", "question", "choices", "hint", "image")
    return pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)})


def test_cross_split_twins_are_counted_by_content(tmp_path):
    """A test question identical to a training one in what the student sees (question, options in any
    order, hint, image bytes) is counted under any pid; one differing in any of those is not."""
    import pyarrow.parquet as pq

    from svrd.split import split_file

    base = ("train", "t", "Which is hotter?", ["June", "May"], "A graph.", b"png-1")
    rows = [("1", *base)]
    rows.append(("2", "test", "t", "Which is hotter?", ["May", "June"], "A graph.", b"png-1"))   # twin, options shuffled
    rows.append(("3", "test", "t", "Which is hotter?", ["June", "May"], "A graph.", b"png-2"))   # other image
    rows.append(("4", "test", "t", "Which is hotter?", ["June", "May"], "Another.", b"png-1"))   # other hint
    rows.append(("5", "test", "t", "Which is colder?", ["June", "May"], "A graph.", b"png-1"))   # other question
    rows.append(("6", "test", "t", "Which is hotter?", ["June", "April"], "A graph.", b"png-1"))  # other options
    rows.append(("7", "val", "t", "Which is hotter?", ["June", "May"], "A graph.", b"png-1"))    # twin in val
    rows.append(("8", "test", "t", "Q?", ["a", "b"], "", b"png-3"))
    rows.append(("9", "val", "t", "Q?", ["b", "a"], None, b"png-3"))                            # no hint = empty hint
    pq.write_table(_content_table(rows), tmp_path / "problems.parquet", row_group_size=3)
    counts = split_file(tmp_path / "problems.parquet", tmp_path / "out")
    dup = counts["duplicates"]
    assert (dup["test_in_train"], dup["test_in_val"], dup["val_in_train"]) == (1, 2, 1)
    assert ["2", "1"] in dup["examples"] and ["8", "9"] in dup["examples"]
