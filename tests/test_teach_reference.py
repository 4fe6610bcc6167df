"""The offline reference teacher, the output table, leakage refusal and the stage script."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from teacher_server import STAGE, make_problems, make_stage_dir, teach_cfg

from svrd.errors import LeakageError
from svrd.teach import PROMPT_VERSION, RATIONALE_SCHEMA, teach, write_outputs
from svrd.teach.reference import NEUTRAL_CAPTION

CFG = teach_cfg(backend="reference", model=None)


def test_reference_agrees_on_every_question(tmp_path):
    rows = make_problems(7) + make_problems(3, "val", prefix="v")
    result = teach(rows, CFG, cache_path=tmp_path / "c.sqlite", progress=False)
    assert [r["pid"] for r in result.rows] == [r["pid"] for r in rows]
    for out, rec in zip(result.rows, rows, strict=True):
        assert out["correct"] is True and out["outcome"] == "agreed" and out["well_formed"] is True
        assert out["letter"] == "ABCDE"[rec["answer"]] and out["choice"] == rec["answer"]
        assert out["conclusion"] == out["letter"]
        assert rec["question"] in out["summary"]
        assert out["caption"] == (rec["caption"] or NEUTRAL_CAPTION)
        assert out["reasoning"] == rec["solution"]
        assert out["split"] == rec["split"]
        assert (out["backend"], out["model"], out["prompt_version"]) == ("reference", "reference", PROMPT_VERSION)
        assert json.loads(out["decoding"])["temperature"] == 0.0
    assert result.metrics["agreed"] == 10 and result.metrics["questions"] == 10
    assert not (tmp_path / "c.sqlite").exists()  # free and deterministic: not cached

    write_outputs(result, tmp_path / "r.parquet", tmp_path / "m.json")
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.schema.equals(RATIONALE_SCHEMA)
    assert json.loads((tmp_path / "m.json").read_text())["questions"] == 10


def test_reference_falls_back_to_the_lecture():
    rec = dict(make_problems(1)[0], solution="")
    (out,) = teach([rec], CFG, progress=False).rows
    assert out["reasoning"] == rec["lecture"] and out["outcome"] == "agreed"


def test_test_pids_never_reach_the_teacher():
    rows = make_problems(3) + make_problems(1, "test", prefix="t")
    with pytest.raises(LeakageError, match="t0000"):
        teach(rows, CFG, progress=False)


def test_stage_script_writes_table_metrics_and_summary(tmp_path):
    make_stage_dir(tmp_path, make_problems(4), make_problems(2, "val", prefix="v"), backend="reference")
    env = dict(os.environ, SVRD_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, str(STAGE)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("teach: 6 questions") and "6 agreed" in out.stdout
    table = pq.read_table(tmp_path / "data" / "teach" / "rationales.parquet").to_pylist()
    assert [r["pid"] for r in table] == ["q0000", "q0001", "q0002", "q0003", "v0000", "v0001"]
    metrics = json.loads((tmp_path / "metrics" / "teach.json").read_text())
    assert {"questions", "requests", "cached", "agreed", "substituted", "answer_only", "dropped", "wall_s"} <= set(metrics)
