from __future__ import annotations

import pytest
from fixture_data import scienceqa_sample

from svrd import scoring
from svrd.report import TOPIC_CODES, param_count_label, render_report

SAMPLE = scienceqa_sample()


@pytest.mark.parametrize(
    ("n", "label"),
    [(800_000, "0.8M"), (2_246_000_000, "2.2B"), (113_000_000, "113M"), (10_670_000_000, "11B"),
     (256_000_000, "256M"), (2_000_000_000, "2B"), (999_700_000, "1B"), (45_000, "45K"), (12, "12")],
)
def test_param_count_label(n, label):
    assert param_count_label(n) == label


def _table(md: str, heading: str) -> list[list[str]]:
    lines = md.split(heading, 1)[1].strip().splitlines()
    rows = []
    for line in lines:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_render_report():
    problems = scoring.load_problems(SAMPLE)
    gpt3 = scoring.score(problems, scoring.load_predictions(SAMPLE / "gpt3_test_predictions.json"))
    partial = scoring.score([p for p in problems if p["topic"] == "physics"], {})
    quality = {"n": 361, "well_formed": 97.5, "bleu": 12.3, "rouge_l": 40.1, "disagreement": 5.0,
               "disagreements": 2, "both_determined": 40,
               "examples": [{"pid": "7", "reasoning": "so | Louisiana", "conclusion": "A", "reasoning_choice": "B",
                             "conclusion_choice": "A", "gold": "A"}]}
    md = render_report([
        {"name": "gpt3", "size": "175B", "scores": gpt3, "inference_s": 90, "quality": quality},
        {"name": "student", "size": param_count_label(800_000), "scores": partial, "inference_s": None, "quality": None},
    ])
    t1 = _table(md, "Table 1")
    assert t1[0] == ["model", "size", *TOPIC_CODES, "overall", "inference (min)"]
    gpt3_row = dict(zip(t1[0], t1[2], strict=True))
    # Each topic column counted here from the predictions and the records (the paper's topic names),
    # not taken from scoring.score.
    results = scoring.load_predictions(SAMPLE / "gpt3_test_predictions.json")
    paper_topics = {"GEO": "geography", "PHY": "physics", "BIO": "biology", "ERS": "earth-science",
                    "SAEP": "science-and-engineering-practices", "CHE": "chemistry", "USH": "us-history"}
    for code, topic in paper_topics.items():
        of_topic = [p for p in problems if p["topic"] == topic]
        right = sum(results[p["pid"]] == p["answer"] for p in of_topic)
        assert gpt3_row[code] == f"{100 * right / len(of_topic):.2f}", code
    assert gpt3_row["GEO"] == "71.15"  # 37 of the sample's 52 geography questions
    assert gpt3_row["overall"] == "74.52" and gpt3_row["inference (min)"] == "1.5"
    student = dict(zip(t1[0], t1[3], strict=True))
    assert student["size"] == "0.8M" and student["GEO"] == "–" and student["PHY"] == "0.00"
    assert student["inference (min)"] == "–"

    br = _table(md, "Official ScienceQA breakdown")
    row = dict(zip(br[0], br[2], strict=True))
    assert (row["all"], row["IMG"], row["NAT"], row["SOC"], row["unparseable"]) == ("74.52", "65.87", "76.34", "70.27", "0")
    row = dict(zip(br[0], br[3], strict=True))
    assert row["SOC"] == "–" and row["missing"] == str(partial["missing"])

    rq = _table(md, "Rationale quality")
    assert rq[2][:5] == ["gpt3", "361", "97.50", "12.30", "40.10"] and rq[2][5] == "5.00 (2/40)"
    assert rq[3][1:] == ["–"] * 5
    assert "pid 7" in md and "so | Louisiana" in md
    assert md.index("Table 1") < md.index("Official ScienceQA breakdown") < md.index("Rationale quality")
