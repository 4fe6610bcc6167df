"""The teacher prompt and the parsing of what a LLaVA-CoT teacher writes."""

import hashlib
import subprocess
import sys

from teacher_server import make_problems

from svrd.teach import prompt as teach_prompt
from svrd.teach.prompt import PROMPT_VERSION, TEMPLATE, build_prompt
from svrd.teach.run import _agrees, _candidate


def test_prompt_holds_the_papers_inputs():
    rec = make_problems(3)[2]  # 4 options, gold index 2
    text = build_prompt(rec)
    assert rec["question"] in text
    assert "Context: " + rec["hint"] in text
    for letter, option in zip("ABCD", rec["choices"], strict=True):
        assert f"({letter}) {option}" in text
    assert "Correct answer: (C) gas" in text
    assert rec["lecture"] in text
    assert rec["solution"] in text
    for tag in ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION"):
        assert f"<{tag}>" in text and f"</{tag}>" in text
    assert "letter of the correct option only" in text


def test_prompt_without_lecture_or_hint():
    rec = dict(make_problems(1)[0], hint="", lecture="", solution="")
    text = build_prompt(rec)
    assert "Context:" not in text
    assert "(none)" in text


def test_prompt_version_is_a_stable_hash_of_the_template():
    assert PROMPT_VERSION == hashlib.sha256(TEMPLATE.encode()).hexdigest()[:12]
    out = subprocess.run([sys.executable, "-c", "from svrd.teach.prompt import PROMPT_VERSION; print(PROMPT_VERSION)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == PROMPT_VERSION  # same in a fresh interpreter (no salted hash)
    edited = hashlib.sha256((TEMPLATE + " ").encode()).hexdigest()[:12]
    assert edited != PROMPT_VERSION
    assert teach_prompt.PROMPT_VERSION == PROMPT_VERSION


LLAVA_COT = (
    "< SUMMARY > I will determine whether the magnets attract or repel by looking at their poles. </SUMMARY >\n\n"
    "<CAPTION> The image shows two bar magnets; the S pole of one faces the N pole of the other. </ CAPTION>\n\n"
    "<REASONING > Opposite poles attract. The facing poles are S and N, so the magnets attract. </REASONING>\n\n"
    "<CONCLUSION > B: attract"
)


def test_llava_cot_output_parses_into_four_stages_and_the_letter():
    rec = dict(make_problems(1)[0], choices=["repel", "attract"], answer=1)
    cand = _candidate(0, LLAVA_COT, rec)
    r = cand.rationale
    assert r.summary.startswith("I will determine")
    assert r.caption.startswith("The image shows two bar magnets")
    assert r.reasoning.endswith("so the magnets attract.")
    assert r.conclusion == "B: attract"
    assert cand.choice == 1 and cand.letter == "B"
    assert _agrees(cand, rec)
    assert not _agrees(cand, dict(rec, answer=0))
