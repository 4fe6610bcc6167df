from __future__ import annotations

import pytest

from svrd.quality import rationale_quality
from svrd.rationale import format_rationale

CHOICES = ["West Virginia", "Louisiana"]
SOLUTION = "North is at the top of the map. West Virginia is farther north than Louisiana."


def _row(pid, raw, solution=SOLUTION, key="raw"):
    return {"pid": pid, key: raw, "choices": CHOICES, "answer": 0, "solution": solution}


AGREE = format_rationale("Which state is farthest north.", "A map.", "North is at the top of the map. So West Virginia.", "A")
DISAGREE = format_rationale("Which state.", "A map.", "The map shows it, so West Virginia.", "B")
BROKEN = "<SUMMARY> which state <REASONING> Louisiana is south. <CONCLUSION> A"
PLAIN = "North is at the top of the map. West Virginia is farther north than Louisiana."


def test_quality_metrics():
    q = rationale_quality([_row("1", AGREE), _row("2", DISAGREE), _row("3", BROKEN), _row("4", PLAIN, key="output")])
    assert q["n"] == 4
    assert q["well_formed"] == 50.0
    assert q["references"] == 4
    # 1: reasoning West Virginia, conclusion A (agree); 2: West Virginia vs B; 3: Louisiana vs A; 4: no reasoning stage.
    assert (q["both_determined"], q["disagreements"]) == (3, 2)
    assert q["disagreement"] == pytest.approx(66.67)
    assert [e["pid"] for e in q["examples"]] == ["2", "3"]
    ex = q["examples"][0]
    assert ex["reasoning_choice"] == "A" and ex["conclusion_choice"] == "B" and ex["gold"] == "A"
    assert ex["conclusion"] == "B" and "West Virginia" in ex["reasoning"]
    assert 0 < q["bleu"] <= 100 and 0 < q["rouge_l"] <= 100


def test_identical_reasoning_scores_full_marks_and_plain_text_is_used_without_tags():
    q = rationale_quality([_row("1", PLAIN)])
    assert q["bleu"] == pytest.approx(100.0) and q["rouge_l"] == pytest.approx(100.0)
    assert q["well_formed"] == 0.0 and q["disagreement"] is None
    tagged = format_rationale("s", "c", SOLUTION, "A")
    assert rationale_quality([_row("1", tagged)])["rouge_l"] == pytest.approx(100.0)  # reasoning stage only


def test_empty_solution_rows_are_left_out_of_text_metrics_and_examples_capped():
    rows = [_row(str(i), DISAGREE, solution="") for i in range(10)]
    q = rationale_quality(rows, max_examples=3)
    assert q["bleu"] is None and q["rouge_l"] is None and q["references"] == 0
    assert len(q["examples"]) == 3 and q["disagreement"] == 100.0


def test_no_rows():
    q = rationale_quality([])
    assert q["n"] == 0 and q["well_formed"] is None and q["examples"] == []
