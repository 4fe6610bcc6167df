"""Table 2 in the score stage (`score.open`): svrd.evaluate.score_models and stages/score.py on the
small fake split of tests/test_evaluate.py, with hand-made answers files under data/open/.

BLEU and ROUGE are checked against the hand computations and the plain n-gram / LCS implementations
of tests/test_score_open.py; BERTScore runs offline on its tiny random RoBERTa.
"""

from __future__ import annotations

import ast
import copy
import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import test_evaluate
import test_score_open
import yaml
from test_evaluate import _pred, _write_preds
from test_score_open import HYPS, REFS, plain_rouge_l, plain_rouge_n

from svrd.errors import SvrdError
from svrd.evaluate import score_models
from svrd.open_scoring import bertscore
from svrd.params import OPEN_DIR, ScoreOpenParams, load_params, params_from_dict

REPO = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((REPO / "params.yaml").read_text())
OPEN = Path(OPEN_DIR)
# The fixtures of those tests, reused: the fake split in a temporary folder, the tiny BERTScore encoder.
project = test_evaluate.project
tiny_roberta = test_score_open.tiny_roberta


def _open_params(**overrides) -> ScoreOpenParams:
    raw = {"references": "data/open/references.json", "predictions": {"student": "data/open/student.jsonl"},
           "bertscore_model": None, "bertscore_layers": None, "bertscore_rescale": False, **overrides}
    return params_from_dict({**RAW, "score": {"open": raw}}).score.open


def _jsonl(path: Path, mapping: dict, id_key="id", answer_key="answer") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({id_key: k, answer_key: v}) + "\n" for k, v in mapping.items()))


def _answers(project_rows, student=HYPS) -> None:
    """The ScienceQA side (one model) and the open side: references as a JSON object, a student as JSONL
    in another order, an exact copy of the references as LLaVA-style records."""
    _write_preds("base", [_pred(p["pid"], p["answer"], None, "generate") for p in project_rows], None)
    OPEN.mkdir(parents=True, exist_ok=True)
    (OPEN / "references.json").write_text(json.dumps(REFS))
    _jsonl(OPEN / "student.jsonl", dict(reversed(list(student.items()))))
    _jsonl(OPEN / "copy.jsonl", REFS, "question_id", "text")


def _hand_bleu() -> float:
    # tests/test_score_open.py: corpus n-gram matches 12/14, 7/11, 5/9, 3/7, no brevity penalty
    return 100 * (12 / 14 * 7 / 11 * 5 / 9 * 3 / 7) ** 0.25


def test_params_default_off_and_dvc_yaml_watches_what_score_reads():
    assert load_params(REPO / "params.yaml").score.open is None
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["score"]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]]
    assert OPEN_DIR in deps and "svrd/open_scoring.py" in deps
    metrics = [next(iter(m)) if isinstance(m, dict) else m for m in stage["metrics"]]
    assert "metrics/open.json" in metrics
    assert all(m["metrics/open.json"]["cache"] is False for m in stage["metrics"] if isinstance(m, dict)
               and "metrics/open.json" in m)
    # Every params.X.Y the stage script reads is covered by one of the stage's params.
    tree = ast.parse((REPO / "stages" / "score.py").read_text())
    read = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "params":
            read.add(f"{node.value.attr}.{node.attr}")
    assert read == {"infer.models", "score.open"}
    assert all(any(key == p or key.startswith(p + ".") for p in stage["params"]) for key in read), stage["params"]
    # The dep exists in a fresh checkout (git keeps the folder), or `dvc repro` would stop on it.
    assert (REPO / OPEN_DIR / "README.md").is_file()
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{OPEN_DIR}/README.md"], cwd=REPO)
    assert ignored.returncode != 0, f"{OPEN_DIR}/README.md is git-ignored: the score stage's dep would be missing"


def test_paths_must_lie_under_the_dep_folder():
    assert _open_params(references="./data/open/sub/r.jsonl").references == "data/open/sub/r.jsonl"
    for bad in ("refs.jsonl", "/abs/data/open/r.jsonl", "data/open/../r.jsonl", "data/open", "data/opener/r.jsonl"):
        with pytest.raises(SvrdError, match=f"score.open.references: must be a file under {OPEN_DIR}/"):
            _open_params(references=bad)
    with pytest.raises(SvrdError, match="score.open.predictions"):
        _open_params(predictions={})


def test_off_writes_an_empty_open_metrics_file_and_leaves_the_report_alone(project):
    _answers(project)
    lines = score_models(["base"])
    assert len(lines) == 1
    assert json.loads(Path("metrics/open.json").read_text()) == {}
    report = Path("metrics/report.md").read_text()
    assert "Table 2" not in report and "Open-ended" not in report
    lines_on = score_models(["base"], _open_params())
    on = Path("metrics/report.md").read_text()
    assert on.startswith(report) and lines_on[0] == lines[0]  # Table 2 only adds, at the end


def test_bleu_and_rouge_in_metrics_and_report(project):
    _answers(project)
    cfg = _open_params(predictions={"student": "data/open/student.jsonl", "copy": "data/open/copy.jsonl"})
    lines = score_models(["base"], cfg)
    metrics = json.loads(Path("metrics/open.json").read_text())
    assert list(metrics) == ["student", "copy"]
    student = metrics["student"]
    assert set(student) == {"n", "bleu", "rouge1", "rouge2", "rougeL"}  # numbers only; no BERTScore asked
    assert student["n"] == 3
    assert student["bleu"] == pytest.approx(_hand_bleu(), abs=0.005)
    for kind, plain in (("rouge1", lambda h, r: plain_rouge_n(h, r, 1)), ("rouge2", lambda h, r: plain_rouge_n(h, r, 2)),
                        ("rougeL", plain_rouge_l)):
        assert student[kind] == pytest.approx(100 * sum(plain(HYPS[k], REFS[k]) for k in REFS) / 3, abs=0.005)
    # a copy of the references: 100 but for ROUGE-2 of the one-word answer "red", which has no bigram
    assert metrics["copy"] == {"n": 3, "bleu": 100.0, "rouge1": 100.0, "rouge2": 66.67, "rougeL": 100.0}
    assert plain_rouge_n("red", "red", 2) == 0.0
    assert lines[-2] == "score-open student: BLEU 60.03, ROUGE-L 53.85 over 3 answers of data/open/references.json"

    report = Path("metrics/report.md").read_text().splitlines()
    at = report.index("## Open-ended answers (the paper's Table 2)")
    assert report[at + 2] == "| model | n | BLEU | ROUGE-1 | ROUGE-2 | ROUGE-L | BERTScore P | BERTScore R | BERTScore F1 |"
    assert report[at + 4] == "| student | 3 | 60.03 | 64.10 | 45.45 | 53.85 | – | – | – |"
    assert report[at + 5] == "| copy | 3 | 100.00 | 100.00 | 66.67 | 100.00 | – | – | – |"
    assert ("Answers (student = data/open/student.jsonl, copy = data/open/copy.jsonl) against "
            "data/open/references.json.") in report


def test_bertscore_with_a_local_encoder_under_the_dep_folder(project, tiny_roberta):
    _answers(project)
    shutil.copytree(tiny_roberta, OPEN / "encoder")
    cfg = _open_params(predictions={"student": "data/open/student.jsonl", "copy": "data/open/copy.jsonl"},
                       bertscore_model="data/open/encoder", bertscore_layers=1)
    score_models(["base"], cfg)
    metrics = json.loads(Path("metrics/open.json").read_text())
    assert (metrics["copy"]["bertscore_p"], metrics["copy"]["bertscore_r"], metrics["copy"]["bertscore_f1"]) == (
        100.0, 100.0, 100.0)
    direct = bertscore(list(HYPS.values()), list(REFS.values()), model="data/open/encoder", num_layers=1, device="cpu")
    for key in ("bertscore_p", "bertscore_r", "bertscore_f1"):
        assert metrics["student"][key] == direct[key] < 100.0
    assert metrics["student"]["bleu"] == pytest.approx(_hand_bleu(), abs=0.005)
    report = Path("metrics/report.md").read_text()
    assert "BERTScore: data/open/encoder layer 1." in report


def test_a_local_encoder_outside_the_dep_folder_is_refused(project, tmp_path):
    _answers(project)
    elsewhere = tmp_path / "encoder"
    elsewhere.mkdir()
    with pytest.raises(SvrdError, match=f"score.open.bertscore_model: {elsewhere} is a local folder outside {OPEN_DIR}/"):
        score_models(["base"], _open_params(bertscore_model=str(elsewhere)))
    assert not Path("metrics/scores.json").exists()


def _run_stage(monkeypatch, capsys, open_section) -> tuple[int, str]:
    raw = copy.deepcopy(RAW)
    raw["score"] = {"open": open_section}
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setattr(sys, "argv", ["stages/score.py"])
    monkeypatch.syspath_prepend(str(REPO / "stages"))  # as `python stages/score.py` puts it first
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "stages" / "score.py"), run_name="__main__")
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err


BROKEN = {
    "references missing": ("references.json", None,
                           "score.open.references: data/open/references.json: no such file"),
    "predictions not JSON": ("student.jsonl", '{"id": "q1", "answer": "x"}\n{"id": "q2", "ans',
                             "score.open.predictions.student: data/open/student.jsonl: line 2 is not JSON"),
    "prediction without answer": ("student.jsonl", '{"id": "q1", "answer": "x"}\n{"id": "q2", "output": "y"}\n',
                                  "score.open.predictions.student: data/open/student.jsonl: line 2 has no answer field"),
    "references not objects": ("references.json", "[1, 2]",
                               "score.open.references: data/open/references.json: record 1 is not a JSON object"),
    "an id short": ("student.jsonl", '{"id": "q1", "answer": "x"}\n',
                    "score.open.predictions.student: data/open/student.jsonl: 2 ids of data/open/references.json "
                    "have no prediction"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_missing_or_malformed_file_stops_the_stage_with_one_line_naming_it(project, monkeypatch, capsys, case):
    name, text, message = BROKEN[case]
    _answers(project)
    if text is None:
        (OPEN / name).unlink()
    else:
        (OPEN / name).write_text(text)
    code, err = _run_stage(monkeypatch, capsys, {
        "references": "data/open/references.json", "predictions": {"student": "data/open/student.jsonl"},
        "bertscore_model": None, "bertscore_layers": None, "bertscore_rescale": False})
    assert code == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"score: error: {message}"), err
    assert not Path("metrics/scores.json").exists()  # checked before anything is scored or written


def test_the_stage_script_passes_score_open(project, monkeypatch, capsys):
    _answers(project)
    code, _ = _run_stage(monkeypatch, capsys, {
        "references": "data/open/references.json", "predictions": {"student": "data/open/student.jsonl"},
        "bertscore_model": None, "bertscore_layers": None, "bertscore_rescale": False})
    assert code == 0
    assert json.loads(Path("metrics/open.json").read_text())["student"]["rougeL"] == 53.85
