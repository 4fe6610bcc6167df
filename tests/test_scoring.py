from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from fixture_data import scienceqa_sample

from svrd import scoring
from svrd.cli import main
from svrd.errors import SvrdError
from svrd.io import read_json, write_json, write_table
from svrd.records import PROBLEM_SCHEMA

SAMPLE = scienceqa_sample()
GPT3 = SAMPLE / "gpt3_test_predictions.json"


def test_reproduces_published_gpt3_scores():
    problems = scoring.load_problems(SAMPLE, split="test")
    assert len(problems) == 361
    m = scoring.score(problems, scoring.load_predictions(GPT3))
    assert m["all"] == {"acc": 74.52, "correct": 269, "total": 361}
    assert (m["IMG"]["acc"], m["IMG"]["total"]) == (65.87, 167)
    assert m["NAT"]["acc"] == 76.34
    assert m["SOC"]["acc"] == 70.27
    assert (m["unparseable"], m["missing"], m["out_of_range"]) == (0, 0, 0)
    assert m["NAT"]["total"] + m["SOC"]["total"] + m["LAN"]["total"] == 361
    assert m["G1-6"]["total"] + m["G7-12"]["total"] == 361
    assert m["topic/geography"]["total"] == 52
    assert sum(v["total"] for k, v in m.items() if k.startswith("topic/")) == 361
    assert list(m)[: len(scoring.GROUPS)] == list(scoring.GROUPS)
    json.dumps(m)  # plain JSON for dvc metrics


def test_problems_json_file_and_pid_splits_agree():
    by_folder = scoring.load_problems(SAMPLE)
    by_file = scoring.load_problems(SAMPLE / "problems.json")
    splits = read_json(SAMPLE / "pid_splits.json")
    assert {p["pid"] for p in by_folder} == {p["pid"] for p in by_file} == set(splits["test"])
    assert len(scoring.load_problems(SAMPLE, split="all")) == 1773


def test_split_from_record_field_when_no_pid_splits(tmp_path):
    raw = read_json(SAMPLE / "problems.json")
    write_json(tmp_path / "problems.json", {k: raw[k] for k in list(raw)[:200]})
    problems = scoring.load_problems(tmp_path, split="val")
    assert problems and all(p["split"] == "val" for p in problems)
    no_split = {k: {f: v for f, v in raw[k].items() if f != "split"} for k in list(raw)[:5]}
    write_json(tmp_path / "problems.json", no_split)
    with pytest.raises(SvrdError, match="cannot restrict"):
        scoring.load_problems(tmp_path, split="test")


def _problem(pid, answer=0, n=3, **kw):
    rec = {"pid": pid, "choices": [f"c{i}" for i in range(n)], "answer": answer, "hint": "", "image": None,
           "subject": "natural science", "grade": "grade3", "topic": "physics"}
    rec.update(kw)
    return rec


def test_groups_and_failure_counts():
    problems = [
        _problem("1", hint="ctx"),  # TXT
        _problem("2", image=b"\x89PNG"),  # IMG (pipeline bytes)
        _problem("3", image="image.png", hint="ctx", subject="social science", grade="grade9", topic="geography"),
        _problem("4"),  # NO
        _problem("5", subject="language science", grade="grade12"),
        _problem("6"),
    ]
    preds = {"1": 0, "2": 1, "3": 0, "4": None, "5": 7, 6: 0}  # 4 unparseable, 5 out of range; int key ok
    m = scoring.score(problems, preds)
    assert m["all"] == {"acc": 50.0, "correct": 3, "total": 6}
    assert m["TXT"]["total"] == 2 and m["IMG"]["total"] == 2 and m["NO"]["total"] == 3
    assert m["SOC"] == {"acc": 100.0, "correct": 1, "total": 1}
    assert m["LAN"] == {"acc": 0.0, "correct": 0, "total": 1}
    assert m["G7-12"]["total"] == 2 and m["G1-6"]["total"] == 4
    assert m["topic/geography"]["acc"] == 100.0
    assert (m["unparseable"], m["missing"], m["out_of_range"]) == (1, 0, 1)
    m = scoring.score(problems, {"1": 0})
    assert m["missing"] == 5 and m["all"]["correct"] == 1
    empty = scoring.score([_problem("1")], {"1": 0})
    assert empty["SOC"] == {"acc": None, "correct": 0, "total": 0}
    with pytest.raises(SvrdError, match="twice"):
        scoring.score([_problem("1"), _problem("1")], {})


def test_confusion_rows():
    rows = scoring.confusion([_problem("1", answer=1), _problem("2"), _problem("3")], {"1": 1, "2": None})
    assert rows == [
        {"pid": "1", "gold": "B", "predicted": "B"},
        {"pid": "2", "gold": "A", "predicted": "none"},
        {"pid": "3", "gold": "A", "predicted": "none"},
    ]


def _parquet_problems(tmp_path: Path) -> Path:
    rows = []
    for p in scoring.load_problems(SAMPLE, split="all"):
        rec = {name: p.get(name) for name in PROBLEM_SCHEMA.names}
        rec["image"] = b"\x89PNG fake bytes" if p["image"] else None
        rec["caption"] = ""
        rows.append(rec)
    path = tmp_path / "problems.parquet"
    write_table(path, pa.Table.from_pylist(rows, schema=PROBLEM_SCHEMA))
    return path


def test_parquet_problems_and_predictions(tmp_path):
    problems = scoring.load_problems(_parquet_problems(tmp_path), split="test")
    assert len(problems) == 361 and all(p["image"] in (True, False) for p in problems)
    gpt3 = scoring.load_predictions(GPT3)
    pred_rows = [{"pid": pid, "choice": c, "model": "gpt3", "raw": "x"} for pid, c in gpt3.items()]
    pred_rows[0]["choice"] = None
    write_table(tmp_path / "preds.parquet", pred_rows)
    preds = scoring.load_predictions(tmp_path / "preds.parquet")
    assert sum(v is None for v in preds.values()) == 1
    m = scoring.score(problems, preds)
    assert m["unparseable"] == 1 and m["IMG"]["total"] == 167
    first = next(p for p in problems if p["pid"] == pred_rows[0]["pid"])
    assert m["all"]["correct"] == 269 - (gpt3[first["pid"]] == first["answer"])

    write_table(tmp_path / "two.parquet", pred_rows + [{**r, "model": "other"} for r in pred_rows])
    with pytest.raises(SvrdError, match="several models"):
        scoring.load_predictions(tmp_path / "two.parquet")
    assert len(scoring.load_predictions(tmp_path / "two.parquet", model="other")) == 361


def test_bad_inputs(tmp_path):
    with pytest.raises(SvrdError):
        scoring.load_problems(tmp_path)  # folder without problems.json
    with pytest.raises(SvrdError):
        scoring.load_predictions(tmp_path / "nope.json")
    write_json(tmp_path / "p.json", {"results": {"1": "B?"}})
    with pytest.raises(SvrdError, match="pid 1"):
        scoring.load_predictions(tmp_path / "p.json")
    write_json(tmp_path / "p.json", {"1": 2, "2": None, "3": "1"})
    assert scoring.load_predictions(tmp_path / "p.json") == {"1": 2, "2": None, "3": 1}


def test_cli_score(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["score", str(SAMPLE), str(GPT3), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["all"]["acc"] == 74.52
    assert read_json(out) == printed
    assert main(["score", str(tmp_path / "missing"), str(GPT3)]) == 2


def test_prediction_edge_values_count_as_the_scorer_documents():
    problems = [_problem(str(i), answer=1, n=3) for i in range(8)]
    preds = {
        "0": 1,                  # right
        "1": 3,                  # one past the last option: out of range, not a fourth option
        "2": -1,                 # out of range
        "3": float("nan"),       # pandas' null: unparseable
        "4": 1.0,                # a whole float is that option
        "5": 1.5,                # not an option index: out of range
        "6": True,               # a bool is not an index
        "7": np.int64(1),        # numpy integers are indices
    }
    m = scoring.score(problems, preds)
    assert (m["all"]["correct"], m["unparseable"], m["out_of_range"], m["missing"]) == (3, 1, 4, 0)


def test_a_problem_without_a_topic_or_known_grade_counts_in_no_topic_or_grade_group():
    m = scoring.score([_problem("1", topic="", grade="", subject="")], {"1": 0})
    assert [k for k in m if k.startswith("topic/")] == []
    assert m["G1-6"]["total"] == m["G7-12"]["total"] == 0
    assert m["NAT"]["total"] == m["SOC"]["total"] == m["LAN"]["total"] == 0
    assert m["all"] == {"acc": 100.0, "correct": 1, "total": 1}


def test_pid_splits_decide_the_split_when_records_carry_none(tmp_path):
    raw = read_json(SAMPLE / "problems.json")
    write_json(tmp_path / "problems.json", {k: {f: v for f, v in rec.items() if f != "split"} for k, rec in raw.items()})
    (tmp_path / "pid_splits.json").write_text((SAMPLE / "pid_splits.json").read_text())
    assert {p["pid"] for p in scoring.load_problems(tmp_path, split="test")} == set(read_json(GPT3)["results"])


def test_pq_suffix_and_a_table_that_is_not_a_problems_table(tmp_path):
    path = _parquet_problems(tmp_path)
    pq_path = path.rename(tmp_path / "problems.pq")
    assert len(scoring.load_problems(pq_path, split="test")) == 361
    write_table(tmp_path / "other.parquet", [{"pid": "1", "choices": ["a"]}])
    with pytest.raises(SvrdError, match=r"missing columns \['answer'\]"):
        scoring.load_problems(tmp_path / "other.parquet")


def test_string_predictions_that_are_integers(tmp_path):
    write_json(tmp_path / "p.json", {"results": {"1": "-1", "2": " 2 "}})
    assert scoring.load_predictions(tmp_path / "p.json") == {"1": -1, "2": 2}


def test_cli_passes_split_and_model_through(tmp_path, capsys):
    problems = _parquet_problems(tmp_path)
    rows = [{"pid": pid, "choice": c, "model": "gpt3"} for pid, c in scoring.load_predictions(GPT3).items()]
    write_table(tmp_path / "preds.parquet", rows + [{**r, "choice": None, "model": "other"} for r in rows])
    assert main(["score", str(problems), str(tmp_path / "preds.parquet"), "--model", "gpt3", "--split", "all"]) == 0
    printed = json.loads(capsys.readouterr().out)
    # every record of the sample, of which only the 361 test pids are predicted
    assert printed["all"]["total"] == 1773 and printed["all"]["correct"] == 269
    assert printed["missing"] == 1773 - 361
