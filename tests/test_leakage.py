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
        parts = {k: v.column("pid").to_pylist() for k, v in split_table(table, strategy).items()}
        # checked with plain sets here, not with split's own check_disjoint: every pid lands in
        # exactly one split, and no split holds a pid twice
        every = [pid for pids in parts.values() for pid in pids]
        assert sorted(every, key=int) == [str(i) for i in range(30)]
        assert all(not set(parts[a]) & set(parts[b]) for a in parts for b in parts if a < b)
        if strategy == "official":
            assert {k: sorted(v, key=int) for k, v in parts.items()} == {
                s: [str(i) for i in range(30) if ["train", "val", "test"][i % 3] == s] for s in ("train", "val", "test")}


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


# --- the stage scripts themselves, run as DVC runs them, with a test question planted in their inputs


@pytest.fixture(scope="module")
def stage_copy(tmp_path_factory):
    from project_copy import copy_project, run_env

    root = tmp_path_factory.mktemp("leak")
    return copy_project(root / "project"), run_env(root)


def _plant(project, train_split: str = "train", rationale_split: str = "train") -> None:
    """Split tables and rationales where pid 7 is a test question, its row carrying split='test'."""
    write_table(project / SPLIT_DIR / "train.parquet",
                pa.table({"pid": ["1", "7"], "split": ["train", train_split], "topic": ["a", "a"]}))
    write_table(project / SPLIT_DIR / "val.parquet", pa.table({"pid": ["3"], "split": ["val"], "topic": ["a"]}))
    write_table(project / SPLIT_DIR / "test.parquet", pa.table({"pid": ["7"], "split": ["test"], "topic": ["a"]}))
    write_table(project / RATIONALES, pa.table({"pid": ["1", "7"], "split": ["train", rationale_split]}))


def _stage(project, env, script: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, f"stages/{script}.py"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize(("script", "planted"), [
    ("distill", {"train_split": "test"}),      # a test question among the training rows
    ("distill", {"rationale_split": "test"}),  # a rationale written for a test question
    ("prefer", {"train_split": "test"}),       # a test question among the rows prefer samples chains on
])
def test_stage_refuses_a_planted_test_pid(stage_copy, script, planted):
    """Subprocess runs of the stage scripts (a few seconds each: their imports)."""
    project, env = stage_copy
    _plant(project, **planted)
    proc = _stage(project, env, script)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"{script}: error: {script}: pid 7 is a test question and must never reach {script}" in proc.stderr
