"""Substituted rationales are checked: a reasoning that names another option than the gold one is
counted (and dropped with teach.on_contradiction=drop); outputs cut before their conclusion are
counted apart. Scripted answers from the local fake server; expected counts worked out by hand."""

import json

import pytest
from teacher_server import FakeTeacher, make_problems, teach_cfg

from svrd.teach import teach, write_outputs
from svrd.teach.openai_backend import OpenAIBackend

HEAD = "<SUMMARY> What the question asks. </SUMMARY>\n<CAPTION> The picture shows the setup. </CAPTION>\n"


def full(reasoning: str, letter: str) -> str:
    return f"{HEAD}<REASONING> {reasoning} </REASONING>\n<CONCLUSION> {letter} </CONCLUSION>"


# make_problems: q0000 attract|repel (gold A attract), q0001 north|south|east (gold B south),
# q0002 solid|liquid|gas|plasma (gold C gas), q0003 attract|repel (gold B repel): answer = i % len(choices).
SCRIPT = {
    "q0000": full("The poles differ, so they attract.", "A"),  # agrees
    "q0001": full("The arrow points up the map. Therefore the answer is north.", "A"),  # reasoning: north, not south
    "q0002": full("It has no fixed shape or volume. Therefore the answer is gas.", "D"),  # slip in the conclusion only
    "q0003": f"{HEAD}<REASONING> The north pole of one magnet faces the", # cut before the conclusion
}


def scripted(pid: str, sample: int, prompt: str) -> str:
    return SCRIPT[pid]


def run(tmp_path, **cfg):
    rows = make_problems(4)
    with FakeTeacher(responder=scripted) as server:
        config = teach_cfg(base_url=server.base_url, **cfg)
        result = teach(rows, config, cache_path=tmp_path / "c.sqlite",
                       backend=OpenAIBackend(config, backoff_base_s=0.01), progress=False)
    write_outputs(result, tmp_path / "rationales.parquet", tmp_path / "teach.json")
    return result, json.loads((tmp_path / "teach.json").read_text())


def test_substituted_rationales_are_checked_and_counted(tmp_path):
    result, metrics = run(tmp_path)
    assert {k: metrics[k] for k in ("agreed", "substituted", "contradicting", "cut", "cut_outputs", "dropped")} == {
        "agreed": 1, "substituted": 3, "contradicting": 1, "cut": 1, "cut_outputs": 1, "dropped": 0}
    rows = {r["pid"]: r for r in result.rows}
    assert rows["q0001"]["contradicts"] and rows["q0001"]["reasoning_choice"] == 0  # north
    assert not rows["q0002"]["contradicts"] and rows["q0002"]["reasoning_choice"] == 2  # gas, the gold answer
    assert rows["q0003"]["cut"] and not rows["q0003"]["contradicts"]
    assert not any(rows[p]["cut"] for p in ("q0000", "q0001", "q0002"))
    assert all(rows[p]["conclusion"] == gold for p, gold in (("q0001", "B"), ("q0002", "C"), ("q0003", "B")))
    assert "3 substituted" in result.summary and "1 contradicting their reasoning (kept)" in result.summary
    assert "1 cut before the conclusion" in result.summary


def test_on_contradiction_drop_drops_only_the_contradicting_rationale(tmp_path):
    result, metrics = run(tmp_path, on_contradiction="drop")
    assert sorted(r["pid"] for r in result.rows) == ["q0000", "q0002", "q0003"]
    assert (metrics["substituted"], metrics["dropped"], metrics["dropped_contradicting"]) == (2, 1, 1)
    assert "1 contradicting their reasoning (dropped)" in result.summary


def two_candidates(pid: str, sample: int, prompt: str) -> str:
    """q0001 (gold B south): sample 0 reasons to north, sample 1 to south; both conclude A."""
    if pid != "q0001":
        return SCRIPT[pid]
    return full("Therefore the answer is north." if sample == 0 else "Therefore the answer is south.", "A")


def test_substitution_prefers_a_candidate_whose_reasoning_agrees(tmp_path):
    rows = make_problems(2)
    with FakeTeacher(responder=two_candidates) as server:
        config = teach_cfg(base_url=server.base_url, samples=2, temperature=0.7, on_contradiction="drop")
        result = teach(rows, config, cache_path=tmp_path / "c.sqlite",
                       backend=OpenAIBackend(config, backoff_base_s=0.01), progress=False)
    q1 = next(r for r in result.rows if r["pid"] == "q0001")
    assert (q1["sample"], q1["outcome"], q1["contradicts"]) == (1, "substituted", False)
    assert result.metrics["contradicting"] == 0


def test_unknown_on_contradiction_is_refused(tmp_path):
    from svrd.errors import SvrdError

    with pytest.raises(SvrdError, match="on_contradiction"):
        run(tmp_path, on_contradiction="fix")
