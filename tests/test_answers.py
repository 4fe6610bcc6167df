"""Answer extraction: real-looking outputs of LLaVA-CoT, Moondream-style students and chat models,
including the cases the published SVRD code got wrong ("Illinois" as "I"; "B." and "(B)" missed)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svrd.answers import extract_choice, normalize, reasoning_choice

MAGNETS = ["attract", "repel"]
MAGNETS3 = ["attract", "repel", "neither"]
STATES = ["West Virginia", "Louisiana", "Arizona", "Oklahoma"]
I_STATES = ["Illinois", "Iowa", "Indiana"]
VA = ["West Virginia", "Virginia", "Maryland"]
ANIMALS = ["a magnet", "a rock", "a leaf"]
LLAVA = (
    "<SUMMARY> I will identify the northernmost state using the compass rose. </SUMMARY>\n"
    "<CAPTION> A map of the United States with four states highlighted. </CAPTION>\n"
    "<REASONING> North is at the top. West Virginia lies farthest up among the options. </REASONING>\n"
)

CASES = [
    # --- conclusion stage, letters
    (LLAVA + "<CONCLUSION> A </CONCLUSION>", STATES, 0),
    (LLAVA + "< CONCLUSION > A < /CONCLUSION >", STATES, 0),
    (LLAVA + "<CONCLUSION> A", STATES, 0),  # missing closing tag
    (LLAVA + "<conclusion>(A)</conclusion>", STATES, 0),
    (LLAVA + "<CONCLUSION> A. West Virginia </CONCLUSION>", STATES, 0),
    (LLAVA + "<CONCLUSION>\nThe answer is (A).\n</CONCLUSION>", STATES, 0),
    (LLAVA + "<CONCLUSION> Answer: A </CONCLUSION>", STATES, 0),
    (LLAVA + "<CONCLUSION> **A** </CONCLUSION>", STATES, 0),
    (LLAVA + "<CONCLUSION> Option A </CONCLUSION> some trailing chatter about C", STATES, 0),
    (LLAVA + "<CONCLUSION> A) West Virginia", STATES, 0),
    (LLAVA + "<CONCLUSION> The correct option is B. </CONCLUSION>", STATES, 1),
    (LLAVA + "<CONCLUSION> B: Louisiana </CONCLUSION>", STATES, 1),
    (LLAVA + "<CONCLUSION> B is correct. </CONCLUSION>", STATES, 1),
    (LLAVA + "<CONCLUSION> So the state is B.", STATES, 1),
    # --- conclusion stage, option text instead of a letter
    (LLAVA + "<CONCLUSION> West Virginia </CONCLUSION>", STATES, 0),
    (LLAVA + "<CONCLUSION> west virginia. </CONCLUSION>", STATES, 0),
    (LLAVA + "<CONCLUSION> The answer is: West Virginia </CONCLUSION>", VA, 0),
    (LLAVA + "<CONCLUSION> Virginia </CONCLUSION>", VA, 1),  # exact text beats containment
    (LLAVA + "<CONCLUSION> The state farthest north is West Virginia. </CONCLUSION>", VA, 0),
    ("<CONCLUSION> Illinois </CONCLUSION>", I_STATES, 0),  # not the letter I
    ("<CONCLUSION> Iowa", I_STATES, 1),
    ("<CONCLUSION> A magnet </CONCLUSION>", ANIMALS, 0),
    ("<CONCLUSION> A magnet. </CONCLUSION>", ["a rock", "a magnet"], 1),  # the article, not option A
    # --- refusals inside the conclusion
    (LLAVA + "<CONCLUSION> E </CONCLUSION>", MAGNETS3, None),  # no option E
    (LLAVA + "<CONCLUSION> A or B </CONCLUSION>", STATES, None),
    (LLAVA + "<CONCLUSION> West Virginia or Louisiana </CONCLUSION>", STATES, None),
    (LLAVA + "<CONCLUSION> </CONCLUSION>", STATES, None),
    (LLAVA + "<CONCLUSION>", STATES, None),  # cut off right after the tag
    (LLAVA + "<CONCLUSION> I cannot tell from the image. </CONCLUSION>", STATES, None),
    (LLAVA + "<CONCLUSION> A </CONCLUSION> <CONCLUSION> B </CONCLUSION>", STATES, None),
    (LLAVA, STATES, None),  # cut off before the conclusion: a mentioned option is not an answer
    (LLAVA.replace("options.", "options, so the answer is A."), STATES, 0),  # ... an answer statement is
    # --- no tags: Moondream-style short answers
    ("attract", MAGNETS, 0),
    ("Repel.", MAGNETS, 1),
    ("B", MAGNETS, 1),
    ("B.", MAGNETS, 1),
    ("(B)", MAGNETS, 1),
    ("b", MAGNETS, 1),
    ("B. repel", MAGNETS, 1),
    ("B) repel", MAGNETS, 1),
    ("The answer is (B).", MAGNETS, 1),
    ("Answer: B", MAGNETS, 1),
    ("Option B", MAGNETS, 1),
    ("Illinois", I_STATES, 0),
    ("Illinois.", I_STATES, 0),
    ("I think it is Indiana.", I_STATES, 2),
    ("A magnet attracts iron.", MAGNETS3, None),  # article; mentions no option text either
    ("A magnet will repel the other magnet.", MAGNETS3, 1),  # article; mentions "repel" only
    ("The magnets attract because opposite poles face each other. The answer is A.", MAGNETS, 0),
    ("If the answer were B the poles would match. The answer is A.", MAGNETS, 0),  # last statement
    ("The answer is attract.", MAGNETS, 0),
    ("The answer is \\boxed{B}", MAGNETS, 1),
    ("Conclusion: C", MAGNETS3, 2),
    ("E", MAGNETS3, None),
    ("The answer is F.", MAGNETS3, None),
    ("(A) attract (B) repel", MAGNETS, None),  # echoes the options, commits to none
    ("attract and repel", MAGNETS, None),
    ("I don't know.", MAGNETS, None),
    ("", MAGNETS, None),
    ("   \n ", MAGNETS, None),
    ("U.S. history", MAGNETS, None),
    ("The solution is shown in the image.", ["Illinois", "Ohio"], None),
    ("Based on the map, the answer is West Virginia.", STATES, 0),
    ("Louisiana is in the south. Arizona is in the west. The answer is West Virginia.", STATES, 0),
    ("ANSWER: (c)", MAGNETS3, 2),
    ("The final answer is $\\boxed{B}$", MAGNETS, 1),
    ("**Answer:** B", MAGNETS, 1),
    ("Answer: repel (B)", MAGNETS, 1),
    ("<CONCLUSION> The magnets will repel each other. </CONCLUSION>", MAGNETS, 1),
    ("<CONCLUSION> The answer is clearly B </CONCLUSION>", MAGNETS, 1),
    ("<CONCLUSION> A. repel </CONCLUSION>", MAGNETS, 0),  # the letter wins over the text
]


@pytest.mark.parametrize(("text", "choices", "expected"), CASES)
def test_extract_choice(text, choices, expected):
    assert extract_choice(text, choices) == expected


def test_table_is_large_enough():
    assert len(CASES) >= 40


def test_letter_out_of_range_refuses_rather_than_falling_back_to_text():
    # "C" with two options is an invalid commitment even though "repel" appears.
    assert extract_choice("<CONCLUSION> C. repel </CONCLUSION>", MAGNETS) is None


def test_numbers_are_whole_words():
    assert extract_choice("<CONCLUSION> 15 </CONCLUSION>", ["5", "15", "50"]) == 1
    assert extract_choice("<CONCLUSION> 1.5 meters </CONCLUSION>", ["15 meters", "1.5 meters"]) == 1


def test_normalize():
    assert normalize("  West-Virginia!! ") == "west virginia"
    assert normalize("1.5 m.") == "1.5 m"


def test_reasoning_choice():
    text = (
        "<REASONING> Louisiana and Arizona are in the south. Therefore West Virginia is the farthest north. "
        "</REASONING>\n<CONCLUSION> B </CONCLUSION>"
    )
    assert reasoning_choice(text, STATES) == 0
    assert extract_choice(text, STATES) == 1
    assert reasoning_choice("<REASONING> So the answer is (C). </REASONING>", STATES) == 2
    assert reasoning_choice("<REASONING> Both West Virginia and Louisiana. </REASONING>", STATES) is None
    assert reasoning_choice("no tags, West Virginia", STATES) is None
    assert reasoning_choice("", STATES) is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.lists(
            st.sampled_from(["<CONCLUSION>", "</CONCLUSION>", "< conclusion >", "<REASONING>", "A", "B", "(C)",
                             "E", "Illinois", "answer is", "Option", " ", ".", "\n", "attract", "repel", "I"]),
            max_size=20,
        ).map("".join),
    ),
    choices=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=7, unique=True),
)
def test_never_raises_and_stays_in_range(text, choices):
    for fn in (extract_choice, reasoning_choice):
        got = fn(text, choices)
        assert got is None or (isinstance(got, int) and 0 <= got < len(choices))
