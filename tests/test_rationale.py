from __future__ import annotations

import pytest

from svrd.rationale import (
    CONCLUSION_STYLES,
    STAGES,
    Rationale,
    format_conclusion,
    format_rationale,
    parse_rationale,
    stage_segments,
    strip_tags,
)

GOOD = format_rationale("what is asked", "what is shown", "step one. step two.", "B")


def test_format_rationale_layout():
    assert GOOD == (
        "<SUMMARY> what is asked </SUMMARY>\n<CAPTION> what is shown </CAPTION>\n"
        "<REASONING> step one. step two. </REASONING>\n<CONCLUSION> B </CONCLUSION>"
    )


def test_roundtrip_is_well_formed():
    r = parse_rationale(GOOD)
    assert r == Rationale("what is asked", "what is shown", "step one. step two.", "B", True)
    assert [r.stage(s) for s in STAGES] == ["what is asked", "what is shown", "step one. step two.", "B"]
    with pytest.raises(ValueError):
        r.stage("answer")


def test_spaces_and_case_inside_tags():
    text = "< summary >S< /Summary >\n<CAPTION >C</ CAPTION>\n<Reasoning>R</reasoning>\n< CONCLUSION > B < /CONCLUSION >"
    r = parse_rationale(text)
    assert (r.summary, r.caption, r.reasoning, r.conclusion) == ("S", "C", "R", "B")
    assert r.well_formed


def test_missing_closing_tag_runs_to_next_opening_tag_or_end():
    r = parse_rationale("<SUMMARY> s <CAPTION> c </CAPTION><REASONING> r </REASONING><CONCLUSION> B")
    assert (r.summary, r.caption, r.reasoning, r.conclusion) == ("s", "c", "r", "B")
    assert not r.well_formed


def test_stray_text_is_ignored_but_tags_still_read():
    r = parse_rationale("Sure! Here it is.\n" + GOOD + "\nHope this helps.")
    assert r.conclusion == "B" and r.reasoning == "step one. step two."
    assert r.well_formed  # text outside the stages does not break the four stages


@pytest.mark.parametrize(
    "text",
    [
        "<CAPTION> c </CAPTION><SUMMARY> s </SUMMARY><REASONING> r </REASONING><CONCLUSION> B </CONCLUSION>",  # order
        GOOD + "\n<CONCLUSION> C </CONCLUSION>",  # a stage twice
        GOOD.replace("<CAPTION> what is shown </CAPTION>\n", ""),  # a stage missing
        GOOD.replace("<CONCLUSION> B </CONCLUSION>", "<CONCLUSION>  </CONCLUSION>"),  # empty stage
        GOOD.replace(" </REASONING>", ""),  # not closed
        "just an answer: B",
        "",
    ],
)
def test_not_well_formed(text):
    assert not parse_rationale(text).well_formed


def test_repeated_stage_keeps_first_non_empty():
    r = parse_rationale("<CONCLUSION></CONCLUSION><CONCLUSION> A </CONCLUSION><CONCLUSION> B </CONCLUSION>")
    assert r.conclusion == "A"
    assert [s[1] for s in stage_segments("<CONCLUSION> A </CONCLUSION><CONCLUSION> B")] == ["A", "B"]


def test_mismatched_closing_tag_ends_the_open_stage():
    assert stage_segments("<SUMMARY> s </CAPTION> tail") == [("summary", "s", False)]


def test_strip_tags_and_body():
    r = parse_rationale(GOOD)
    assert strip_tags(GOOD) == "what is asked\n\nwhat is shown\n\nstep one. step two.\n\nB"
    assert r.body() == strip_tags(GOOD)


def test_format_conclusion_styles():
    choices = ["attract", " repel "]
    assert CONCLUSION_STYLES == ("letter", "letter_text", "text")
    assert format_conclusion(1, choices, "letter") == "B"
    assert format_conclusion(1, choices, "letter_text") == "B. repel"
    assert format_conclusion(1, choices, "text") == "repel"
    with pytest.raises(ValueError):
        format_conclusion(2, choices, "letter")
    with pytest.raises(ValueError):
        format_conclusion(-1, choices, "letter")
    with pytest.raises(ValueError):
        format_conclusion(0, choices, "LETTER")


def test_formatted_conclusions_are_read_back():
    from svrd.answers import extract_choice

    choices = ["West Virginia", "Virginia", "A magnet"]
    for style in CONCLUSION_STYLES:
        for i in range(len(choices)):
            text = format_rationale("s", "c", "r", format_conclusion(i, choices, style))
            assert extract_choice(text, choices) == i, (style, i)
