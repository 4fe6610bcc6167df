"""No test question may reach training, teaching, or be scored after being trained on."""

from __future__ import annotations

import pyarrow as pa
import pytest

from svrd.errors import LeakageError
from svrd.io import write_table
from svrd.split import check_disjoint, refuse_test_pids, split_table
from svrd.stage import RATIONALES, SPLIT_DIR


def test_split_output_is_disjoint():
    table = pa.table({"pid": [str(i) for i in range(30)], "split": ["train", "val", "test"] * 10,
                      "topic": ["a", "b"] * 15})
    for strategy in ("official", "stratified"):
        parts = split_table(table, strategy)
        check_disjoint({k: v.column("pid").to_pylist() for k, v in parts.items()})


def test_official_split_with_a_repeated_pid_fails_loudly():
    table = pa.table({"pid": ["1", "2", "1"], "split": ["train", "val", "test"], "topic": ["a"] * 3})
    with pytest.raises(LeakageError, match="pid 1 is in both the train and the test split"):
        split_table(table, "official")


def test_check_disjoint():
    check_disjoint({"train": ["1", "2"], "val": ["3"], "test": ["4"]})
    with pytest.raises(LeakageError, match="pid 2"):
        check_disjoint({"train": ["1", "2"], "val": ["3"], "test": ["2"]})


def test_refuse_test_pids():
    refuse_test_pids(["1", "2"], {"1": "train", "2": "val", "3": "test"}, stage="teach")
    with pytest.raises(LeakageError, match="teach: pid 3 is a test question"):
        refuse_test_pids(["1", "3"], {"1": "train", "3": "test"}, stage="teach")
    with pytest.raises(LeakageError, match="distill: pid b"):
        refuse_test_pids(["a", "b"], splits=["train", "test"], stage="distill")


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_table(SPLIT_DIR / "train.parquet", pa.table({"pid": ["1", "2"]}))
    write_table(SPLIT_DIR / "val.parquet", pa.table({"pid": ["3"]}))
    write_table(SPLIT_DIR / "test.parquet", pa.table({"pid": ["4", "5"]}))
    return tmp_path


def test_score_refuses_pids_trained_on(project):
    from svrd.evaluate import check_not_trained_on

    check_not_trained_on({"4", "5"})
    with pytest.raises(LeakageError, match="1 scored pid"):
        check_not_trained_on({"4", "2"})
    with pytest.raises(LeakageError, match="'3'"):
        check_not_trained_on({"3"})


def test_score_refuses_pids_taught(project):
    from svrd.evaluate import check_not_trained_on

    write_table(RATIONALES, pa.table({"pid": ["1", "5"], "rationale": ["r", "r"]}))
    with pytest.raises(LeakageError, match="'5'"):
        check_not_trained_on({"4", "5"})
