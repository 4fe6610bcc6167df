"""`svrd score` on the answer files other tools write: LLaVA's answers JSONL, lmms-eval's logged
samples, plain pid,answer / pid,choice tables, and malformed files (one line, no traceback).

The records follow the writers' own code: LLaVA's llava/eval/model_vqa_science.py (question_id,
prompt, text, answer_id, model_id, metadata) and lmms-eval's evaluator / evaluation_tracker
(doc_id, doc, target, resps, filtered_resps, doc_hash; `doc` and `arguments` dropped since 0.4,
filtered_resps flattened to text since 0.7). Expected scores are counted by hand from how each
answer was written, never by the scorer.
"""

from __future__ import annotations

import csv
import json

import pytest
from fixture_data import scienceqa_sample

from svrd import scoring
from svrd.cli import main
from svrd.io import read_json, write_json
from svrd.records import LETTERS

SAMPLE = scienceqa_sample()
TEST_PROBLEMS = scoring.load_problems(SAMPLE, split="test")  # 361 problems, first pids 4, 5, 11, 15, ...


def _letter(problem, shift=0):
    """The gold letter, or (shift=1) the next option's letter: a wrong answer."""
    return LETTERS[(int(problem["answer"]) + shift) % len(problem["choices"])]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _score(capsys, *argv):
    """Run `svrd score`; returns (exit code, metrics or None, stderr)."""
    code = main(["score", *map(str, argv)])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


# Answer texts as models write them, with whether each is right (True), wrong (False) or names
# no option (None). `p` is the problem.
TEXTS = [
    (lambda p: _letter(p), True),  # LLaVA-1.5 with "Answer with the option's letter"
    (lambda p: f"{_letter(p)}. {p['choices'][p['answer']]}", True),
    (lambda p: f"Let me look at the image.\n The answer is {_letter(p)}.", True),  # --answer-prompter
    (lambda p: _letter(p, shift=1), False),
    (lambda p: f"The answer is {_letter(p, shift=1)}.", False),
    (lambda p: "I am not sure what the image shows.", None),
    (lambda p: "(A) or (B)", None),  # two options: refused, never guessed
    (lambda p: "", None),
]


def _llava_rows(problems):
    rows = []
    for problem, (text, _) in zip(problems, TEXTS, strict=True):
        rows.append({
            "question_id": problem["pid"],
            "prompt": "<image>\n" + problem["question"] + "\nA. ...\nAnswer with the option's letter from the given choices directly.",
            "text": text(problem),
            "answer_id": "Pxw8ZtBLrcHXdBS4ajVRpd",
            "model_id": "llava-v1.5-13b",
            "metadata": {},
        })
    return rows


def test_llava_answers_jsonl(tmp_path, capsys):
    problems = TEST_PROBLEMS[: len(TEXTS)]
    path = _write_jsonl(tmp_path / "answers.jsonl", _llava_rows(problems))
    code, m, err = _score(capsys, SAMPLE, path)
    assert code == 0, err
    assert m["all"]["correct"] == 3 and m["all"]["total"] == 361
    assert m["unparseable"] == 3  # the three None texts
    assert m["missing"] == 361 - len(TEXTS)
    assert "LLaVA answers JSONL" in err and "3 name no option" in err
    # The same file under a .json name (LLaVA's --answers-file takes any name) reads the same.
    path.rename(tmp_path / "answers.json")
    assert _score(capsys, SAMPLE, tmp_path / "answers.json")[1] == m


def test_llava_answers_for_other_splits_are_left_out(tmp_path, capsys):
    """LLaVA answers every question of its question file; only the scored problems count."""
    val_pid = read_json(SAMPLE / "pid_splits.json")["val"][0]
    rows = _llava_rows(TEST_PROBLEMS[: len(TEXTS)])
    rows.append({**rows[0], "question_id": val_pid})
    code, m, err = _score(capsys, SAMPLE, _write_jsonl(tmp_path / "answers.jsonl", rows))
    assert code == 0 and m["all"]["correct"] == 3
    assert f"read {len(TEXTS) + 1} answers" in err and f"{len(TEXTS)} for the problems scored" in err


def _hf_release(tmp_path, problems):
    """The problems as read from lmms-lab/ScienceQA (data.source=hf): pid hf-test-{row:06d}."""
    raw = read_json(SAMPLE / "problems.json")
    release = tmp_path / "hf-release"
    release.mkdir()
    rekeyed = {f"hf-test-{row:06d}": {**raw[p["pid"]], "split": "test"} for row, p in enumerate(problems)}
    write_json(release / "problems.json", rekeyed)
    write_json(release / "pid_splits.json", {"test": list(rekeyed)})
    return release


def _lmms_sample(row, problem, text, version):
    """One logged sample as lmms-eval writes it (<0.4 keeps doc and resps; 0.7 flattens)."""
    target = _letter(problem)
    sample = {"doc_id": row, "target": target, "doc_hash": "5f1c0e", "exact_match": 0.0,
              "input": problem["question"] + "\nAnswer with the option's letter from the given choices directly."}
    if version == "0.3":
        doc = {k: problem[k] for k in ("question", "choices", "answer", "hint", "task", "grade", "subject",
                                       "topic", "category", "skill", "lecture", "solution")}
        sample.update(doc=doc, arguments=[sample["input"], {"max_new_tokens": 16}],
                      resps=[[text]], filtered_resps=[text])
    else:
        sample["filtered_resps"] = text
    return sample


@pytest.mark.parametrize("version", ["0.3", "0.7"])
def test_lmms_eval_logged_samples(tmp_path, capsys, version):
    problems = TEST_PROBLEMS[: len(TEXTS)]
    release = _hf_release(tmp_path, problems)
    rows = [_lmms_sample(row, p, text(p), version) for row, (p, (text, _)) in enumerate(zip(problems, TEXTS, strict=True))]
    path = _write_jsonl(tmp_path / "20260101_samples_scienceqa_img.jsonl", rows)
    code, m, err = _score(capsys, release, path)
    assert code == 0, err
    assert m["all"] == {"acc": 37.5, "correct": 3, "total": 8}
    assert (m["unparseable"], m["missing"]) == (3, 0)
    assert "lmms-eval logged samples" in err


def test_lmms_eval_doc_must_be_the_problem_its_row_names(tmp_path, capsys):
    problems = TEST_PROBLEMS[:4]
    release = _hf_release(tmp_path, problems)
    rows = [_lmms_sample(row, p, "A", "0.3") for row, p in enumerate(problems)]
    rows[1]["doc"], rows[2]["doc"] = rows[2]["doc"], rows[1]["doc"]  # samples of another copy's order
    code, _, err = _score(capsys, release, _write_jsonl(tmp_path / "samples.jsonl", rows))
    assert code == 2 and "doc_id 1 is not problem hf-test-000001" in err


def test_lmms_eval_samples_against_release_pids_say_how_doc_id_maps(tmp_path, capsys):
    rows = [_lmms_sample(row, p, "A", "0.7") for row, p in enumerate(TEST_PROBLEMS[:4])]
    code, _, err = _score(capsys, SAMPLE, _write_jsonl(tmp_path / "samples.jsonl", rows))
    assert code == 2 and "hf-test-000000" in err and "lmms-lab/ScienceQA" in err
    assert len(err.strip().splitlines()) == 1


def test_pid_answer_and_pid_choice_tables(tmp_path, capsys):
    problems = TEST_PROBLEMS[:4]
    answers = [
        _letter(problems[0]),  # right, by letter
        problems[1]["choices"][problems[1]["answer"]],  # right, by the option's text
        _letter(problems[2], shift=1),  # wrong
        "I cannot tell from the picture.",  # names no option
    ]
    with open(tmp_path / "answers.csv", "w", newline="", encoding="utf-8-sig") as fh:  # with a BOM, as Excel saves
        writer = csv.writer(fh)
        writer.writerow(["pid", "answer"])
        writer.writerows([p["pid"], a] for p, a in zip(problems, answers, strict=True))
    code, m, err = _score(capsys, SAMPLE, tmp_path / "answers.csv")
    assert code == 0, err
    assert (m["all"]["correct"], m["unparseable"], m["missing"]) == (2, 1, 357)
    rows = [{"pid": p["pid"], "answer": a} for p, a in zip(problems, answers, strict=True)]
    assert _score(capsys, SAMPLE, _write_jsonl(tmp_path / "answers.jsonl", rows))[1] == m

    (tmp_path / "choices.csv").write_text(
        "pid,choice\n" + f"{problems[0]['pid']},{problems[0]['answer']}\n{problems[1]['pid']},\n", encoding="utf-8")
    code, m, err = _score(capsys, SAMPLE, tmp_path / "choices.csv")
    assert (code, m["all"]["correct"], m["unparseable"], m["missing"]) == (0, 1, 1, 359)


MALFORMED = {
    # LLaVA's answers file cut off mid-line (a killed run): today a raw JSONDecodeError traceback.
    "truncated.jsonl": '{"question_id": "4", "text": "B"}\n{"question_id": "5", "te',
    "unknown.jsonl": '{"id": "4", "output": "B"}\n',
    "no_text.jsonl": '{"question_id": "4", "text": "B"}\n{"question_id": "5"}\n',
    "twice.jsonl": '{"question_id": "4", "text": "B"}\n{"question_id": "4", "text": "A"}\n',
    "header.csv": "4,B\n5,A\n",
    "scalar.json": "[1, 2, 3]",
    "binary.jsonl": b"\x89PNG\r\n\x1a\n\x00\xff",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_answer_files_get_one_clear_line(tmp_path, capsys, name):
    path = tmp_path / name
    content = MALFORMED[name]
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, err = _score(capsys, SAMPLE, path)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"svrd score: error: {path}")
    if name != "twice.jsonl":  # a duplicate is not a format problem
        assert "svrd score reads" in lines[0] and "LLaVA" in lines[0] and "lmms-eval" in lines[0]


def test_malformed_problems_json_is_one_line(tmp_path, capsys):
    (tmp_path / "problems.json").write_text('{"4": {"question": ', encoding="utf-8")
    code, _, err = _score(capsys, tmp_path, SAMPLE / "gpt3_test_predictions.json")
    assert code == 2 and "not JSON" in err and "Traceback" not in err
