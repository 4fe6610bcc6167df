"""svrd.evaluate (the score stage) on small fake split and prediction tables in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from svrd.errors import LeakageError, SvrdError
from svrd.evaluate import likelihood_agreement, score_models
from svrd.infer.schema import PREDICTION_SCHEMA

TOPICS = ["geography", "physics", "biology"]


def _problem(i: int, split: str) -> dict:
    return {"pid": str(1000 + i), "split": split, "question": f"q{i}?", "choices": ["north", "south", "east"],
            "answer": i % 3, "hint": "", "image": b"png", "grade": "grade5", "subject": "natural science",
            "topic": TOPICS[i % 3], "solution": "The arrow points north." if i % 2 else ""}


def _pred(pid: str, choice, text_choice, mode: str, raw: str = "", logprobs=None) -> dict:
    return {"pid": pid, "model": "m", "mode": mode, "raw": raw, "choice": choice, "choice_text": text_choice,
            "option_logprobs": logprobs, "new_tokens": 5, "seconds": 0.5}


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    split = Path("data/split")
    split.mkdir(parents=True)
    test = [_problem(i, "test") for i in range(6)]
    pq.write_table(pa.Table.from_pylist(test), split / "test.parquet")
    pq.write_table(pa.Table.from_pylist([_problem(i, "train") for i in range(10, 13)]), split / "train.parquet")
    pq.write_table(pa.Table.from_pylist([_problem(20, "val")]), split / "val.parquet")
    return test


def _write_preds(name: str, rows: list[dict], stats: dict | None) -> None:
    out = Path("data/infer") / name
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA), out / "predictions.parquet")
    if stats is not None:
        Path("metrics/infer").mkdir(parents=True, exist_ok=True)
        Path(f"metrics/infer/{name}.json").write_text(json.dumps(stats))


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    else:
        yield path, obj


def test_any_number_of_models_with_likelihood_counts_plots_and_report(project):
    gold = [p["answer"] for p in project]
    pids = [p["pid"] for p in project]
    # base: generate mode, right on the first three, one unparseable.
    _write_preds("base", [_pred(pid, g if i < 3 else (None if i == 3 else (g + 1) % 3), None, "generate",
                                "<CONCLUSION> x </CONCLUSION>")
                          for i, (pid, g) in enumerate(zip(pids, gold, strict=True))],
                 {"model": "data/tiny_student", "parameters": 1_243_520, "generate_s": 90.0, "questions": 6,
                  "mode": "generate", "batch_size": 32, "resumed": 0, "questions_per_s": 0.07, "tokens_per_s": 0.3})
    # distilled: likelihood always right; written conclusion right on 2, wrong on 2, unparseable on 2.
    text = [gold[0], gold[1], (gold[2] + 1) % 3, (gold[3] + 1) % 3, None, None]
    _write_preds("distilled", [_pred(pid, g, t, "likelihood", f"<REASONING> r </REASONING>\n<CONCLUSION> c{i} </CONCLUSION>",
                                     [-1.0, -2.0, -3.0])
                               for i, (pid, g, t) in enumerate(zip(pids, gold, text, strict=True))],
                 {"model": "data/distill/model", "parameters": 2_246_000_000, "generate_s": 600.0, "mode": "likelihood"})
    # teacher: no metrics/infer file (size and minutes unknown); missing: never ran.
    _write_preds("teacher", [_pred(pid, g, g, "generate") for pid, g in zip(pids, gold, strict=True)], None)

    lines = score_models(["base", "distilled", "teacher", "missing"])
    assert lines[0].startswith("score base: 50.00% of 6 (1 unparseable)")
    assert "written conclusion 33.33%, differs on 4, 4 right reasoning with a wrong conclusion" in lines[1]
    assert lines[3] == "score missing: no predictions at data/infer/missing/predictions.parquet; skipped"

    scores = json.loads(Path("metrics/scores.json").read_text())
    assert list(scores) == ["base", "distilled", "teacher"]
    assert scores["distilled"]["likelihood"] == {
        "questions": 6, "differ": 4, "differ_pct": 66.67, "text_unparseable": 2, "text_acc": 33.33,
        "text_wrong_likelihood_right": 4, "text_right_likelihood_wrong": 0,
    }
    assert "likelihood" not in scores["base"]
    assert scores["teacher"]["all"]["acc"] == 100.0 and scores["base"]["topic/physics"]["total"] == 2
    # Flat enough for `dvc metrics diff`: model -> group -> number, numbers (or null) only.
    for path, value in _leaves(scores):
        assert len(path) <= 3 and (value is None or isinstance(value, (int, float))), (path, value)

    for name in ("base", "distilled", "teacher"):
        topics = json.loads(Path(f"metrics/plots/topics/{name}.json").read_text())
        assert sorted(t["topic"] for t in topics) == sorted(TOPICS)
        matrix = json.loads(Path(f"metrics/plots/confusion/{name}.json").read_text())
        assert [r["pid"] for r in matrix] == pids and {r["gold"] for r in matrix} == {"A", "B", "C"}
    base_matrix = json.loads(Path("metrics/plots/confusion/base.json").read_text())
    assert base_matrix[3]["predicted"] == "none" and base_matrix[0]["predicted"] == base_matrix[0]["gold"]

    dis = json.loads(Path("metrics/disagreements/distilled.json").read_text())
    assert set(dis) == {"reasoning_vs_conclusion", "likelihood_vs_text"}
    first = dis["likelihood_vs_text"][0]
    assert first["pid"] == pids[2] and first["text_choice"] != first["likelihood_choice"] == first["gold"]
    assert first["conclusion"] == "c2" and first["option_logprobs"] == {"A": -1.0, "B": -2.0, "C": -3.0}
    assert len(dis["likelihood_vs_text"]) == 4

    report = Path("metrics/report.md").read_text()
    table1 = [line for line in report.splitlines() if line.startswith("| base |")][0]
    assert "| 1.2M |" in table1 and table1.endswith("| 1.5 |")  # size; 90 s = 1.5 min
    assert "| distilled | 2.2B |" in report
    assert "## Inference" in report and "| base | data/tiny_student | 1243520 | 1.2M | generate | 6 |" in report
    assert "## Likelihood answers against the written conclusions" in report
    assert "| distilled | 100.0 | 33.33 | 4/6 | 2 | 4 | 0 |" in report


def test_no_predictions_at_all_is_an_error(project):
    with pytest.raises(SvrdError, match="no predictions"):
        score_models(["base"])


def test_a_test_pid_that_was_trained_on_fails(project):
    leaked = [_problem(0, "train")]
    pq.write_table(pa.Table.from_pylist(leaked), "data/split/train.parquet")
    _write_preds("base", [_pred(p["pid"], 0, 0, "generate") for p in project], None)
    with pytest.raises(LeakageError, match="1000"):
        score_models(["base"])


def test_likelihood_agreement_counts_both_directions():
    problems = [{"pid": "1", "choices": ["a", "b"], "answer": 0}, {"pid": "2", "choices": ["a", "b"], "answer": 1},
                {"pid": "3", "choices": ["a", "b"], "answer": 1}]
    preds = [_pred("1", 0, 1, "likelihood"), _pred("2", 0, 1, "likelihood"), _pred("3", 1, 1, "likelihood"),
             _pred("9", 0, 0, "likelihood")]  # pid 9 is not a test question: ignored
    metrics, examples = likelihood_agreement(problems, preds)
    assert metrics["questions"] == 3 and metrics["differ"] == 2
    assert metrics["text_wrong_likelihood_right"] == 1 and metrics["text_right_likelihood_wrong"] == 1
    assert metrics["text_acc"] == 66.67 and metrics["text_unparseable"] == 0
    assert [e["pid"] for e in examples] == ["1", "2"] and examples[0]["option_logprobs"] == {}
