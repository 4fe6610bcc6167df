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
    ("<CONCLUSION> A. repel </CONCLUSION>", MAGNETS, None),  # the letter and its words disagree
]


@pytest.mark.parametrize(("text", "choices", "expected"), CASES)
def test_extract_choice(text, choices, expected):
    assert extract_choice(text, choices) == expected


# One case per rule of the module docstring, each built so that breaking that rule changes the
# answer (the expected values are read off the text by hand, not computed by svrd).
RULES = {
    "statement: answer is (B)": ("The answer is (B).", MAGNETS, 1),
    "statement: the last one wins": ("The answer is B. On reflection, the answer is A.", MAGNETS, 0),
    "statement: last wins over an earlier text one": ("The answer is repel. No wait, the answer is A.", MAGNETS, 0),
    "statement: Answer: B": ("Answer: B", MAGNETS3, 1),
    "statement: correct option is C": ("The correct option is C.", MAGNETS3, 2),
    "statement: Conclusion: C": ("Conclusion: C", MAGNETS3, 2),
    "statement: text after it": ("So the answer is repel, clearly.", MAGNETS3, 1),
    "statement: beats a later marker": ("The answer is A, as option (B) is impossible.", MAGNETS3, 0),
    "statements in a conclusion must agree": (
        "<CONCLUSION> The answer is A. The answer is B. </CONCLUSION>", MAGNETS, None),
    "staged, no conclusion: a statement counts": (LLAVA + "So the answer is B.", STATES, 1),
    "staged, no conclusion: a mention does not": (LLAVA, STATES, None),
    "bare letter": ("C", MAGNETS3, 2),
    "bare bracketed letter": ("(C)", MAGNETS3, 2),
    "lead marker B)": ("B) repel", MAGNETS3, 1),
    "lead marker (B) with text": ("(B) repel", MAGNETS3, 1),
    "lead letter and the option's text": ("B repel", MAGNETS3, 1),
    "lead article, not a letter": ("A magnet will repel it.", MAGNETS3, 1),
    "last line is a bare choice": ("The poles face each other.\nC", MAGNETS3, 2),
    "exact option text": ("Neither.", MAGNETS3, 2),
    "exact text after filler": ("the correct answer is neither", MAGNETS3, 2),
    "markers anywhere agree": ("I pick option C, that is (C).", MAGNETS3, 2),
    "markers anywhere disagree": ("Option A or maybe option C.", MAGNETS3, None),
    "lone letter only in a conclusion": ("<CONCLUSION> So C. </CONCLUSION>", MAGNETS3, 2),
    "lone letter outside a conclusion is nothing": ("So C.", MAGNETS3, None),
    "one option mentioned": ("The magnets will repel.", MAGNETS3, 1),
    "two options mentioned": ("They attract or repel.", MAGNETS3, None),
    "an option inside a longer one does not count": ("It is West Virginia.", VA, 0),
    "a word is never a letter": ("Indiana", I_STATES, 2),
    "a letter with no option": ("D", MAGNETS3, None),
    "repeated conclusions must agree": ("<CONCLUSION> B </CONCLUSION> <CONCLUSION> B. </CONCLUSION>", MAGNETS, 1),
    "spaced conclusion tags are the conclusion": (
        LLAVA.replace("options.", "options, so the answer is A.") + "< CONCLUSION > B < /CONCLUSION >", STATES, 1),
    "negated letter": ("<CONCLUSION> Not A. </CONCLUSION>", MAGNETS, None),
    "negated option text": ("<CONCLUSION> The magnets do not attract. </CONCLUSION>", MAGNETS, None),
    "negated statement": ("<CONCLUSION> The answer is not A. </CONCLUSION>", MAGNETS, None),
    "rejected, then chosen": ("<CONCLUSION> Not B, it is A. </CONCLUSION>", MAGNETS3, 0),
    "letter and its text disagree": ("<CONCLUSION> A. attract </CONCLUSION>", ["repel", "attract"], None),
}


@pytest.mark.parametrize(("text", "choices", "expected"), RULES.values(), ids=RULES.keys())
def test_each_extraction_rule(text, choices, expected):
    assert extract_choice(text, choices) == expected


# A negated option is a rejection, never an answer; a letter whose own words name another
# option is a contradiction. Both are refused (None), unless one option is left standing.
NEGATIONS = [
    ("not A", MAGNETS, None),
    ("Not (A).", MAGNETS, None),
    ("The magnets do not attract.", MAGNETS, None),
    ("The magnets don't attract each other.", MAGNETS, None),
    ("They will never repel.", MAGNETS, None),
    ("The answer isn't B.", MAGNETS, None),
    ("I don't think the answer is B.", MAGNETS, None),
    ("Option A is not correct.", MAGNETS, None),
    ("(B) is wrong.", MAGNETS, None),
    ("<CONCLUSION> The answer is not A </CONCLUSION>", MAGNETS, None),
    ("<CONCLUSION> not B </CONCLUSION>", MAGNETS, None),
    ("<CONCLUSION> The magnets would not repel. </CONCLUSION>", MAGNETS, None),
    ("<CONCLUSION> B. not repel </CONCLUSION>", MAGNETS, None),
    ("<CONCLUSION> rather than attract </CONCLUSION>", MAGNETS, None),
    # something is left standing once the rejected option is set aside
    ("The magnets will not attract; they repel.", MAGNETS, 1),
    ("The answer is A, not B.", MAGNETS, 0),
    ("<CONCLUSION> Not B, it is A. </CONCLUSION>", MAGNETS, 0),
    ("<CONCLUSION> The magnets neither attract nor repel. </CONCLUSION>", MAGNETS3, 2),
    ("It is West Virginia, not Virginia.", VA, 0),
    # a negation in another clause rejects nothing
    ("The poles are not alike, so they attract.", MAGNETS, 0),
    ("<CONCLUSION> No. B </CONCLUSION>", MAGNETS, 1),
    # options that are themselves negative words are still options
    ("The answer is no.", ["yes", "no"], 1),
    ("<CONCLUSION> no </CONCLUSION>", ["yes", "no"], 1),
]
CONFLICTS = [
    ("<CONCLUSION> A. attract </CONCLUSION>", ["repel", "attract"], None),
    ("<CONCLUSION> (A) attract </CONCLUSION>", ["repel", "attract"], None),
    ("<CONCLUSION> A) attract </CONCLUSION>", ["repel", "attract"], None),
    ("<CONCLUSION> The answer is A. attract </CONCLUSION>", ["repel", "attract"], None),
    ("<CONCLUSION> attract (A) </CONCLUSION>", ["repel", "attract"], None),
    ("Answer: attract (A)", ["repel", "attract"], None),
    ("A - attract", ["repel", "attract"], None),
    ("B. Louisiana", STATES, 1),  # agreeing letter and text stay
    ("(B) Louisiana, not West Virginia", STATES, 1),
    ("B. The magnets repel because like poles face.", MAGNETS, 1),
    ("B. West Virginia and Louisiana are both east.", STATES, 1),  # the words name no single option
]


@pytest.mark.parametrize(("text", "choices", "expected"), NEGATIONS + CONFLICTS)
def test_negated_or_contradicted_options_are_refused(text, choices, expected):
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


# Cases that pin details the tables above leave open (each was found by mutation testing: the
# code could be changed without any other test noticing). Expected values are read off by hand.
DETAILS = [
    ("<CONCLUSION> magnet </CONCLUSION>", ANIMALS, 0),  # option text up to its article
    ("<CONCLUSION> Option: magnet </CONCLUSION>", ANIMALS, 0),  # filler words before the text
    ("The answer is magnet.", ANIMALS, 0),
    ("<CONCLUSION> Vitamin C. </CONCLUSION>", ["Vitamin C", "Vitamin D"], 0),  # the text, not a lone "C."
    ("attract", ["attract", "Attract!"], None),  # two options with the same text: no single one
    ("The magnets attract.", ["???", "attract"], 1),  # an option with no words is skipped, not the end
    ("It lies in West Virginia.", ["West", "West Virginia"], 1),  # a shorter option at the same start
    ("I attract", ["repel", "attract"], 1),  # "I" is a word here, not a ninth option
    ("a. The magnets repel.", MAGNETS, 1),  # a lower-case letter outside a statement is a word
    ("The answer is b.", MAGNETS, 1),  # ... and inside one a choice
    ("B repel, unlike attract", MAGNETS3, 1),  # the letter and its option's words
    ("The answer is **B**. They push apart.", MAGNETS, 1),
    ("<CONCLUSION> A. The magnets attract. </CONCLUSION>", ["repel", "attract"], None),
    ("<CONCLUSION> A.\nRepel would need like poles. </CONCLUSION>", MAGNETS, 0),  # the next line explains
    ("Answer: repel\nOpposite poles would attract.\nLike poles push apart.", MAGNETS, 1),  # the statement's line
    ("Answer: repel. Unlike poles would attract.", MAGNETS, 1),  # ... and sentence
    ("The answer is attract because the N and S poles face each other.", MAGNETS, 0),  # N, S are no options
    ("<CONCLUSION> It is A or B maybe </CONCLUSION>", MAGNETS, None),
    ("<CONCLUSION> It is A or B. </CONCLUSION>", MAGNETS, None),
    ("A) attract\nB) repel", MAGNETS, None),  # the options echoed line by line
    ("The poles face each other.\nNothing else matters.\nC", MAGNETS3, 2),  # the last line, not the second
    ("I don't think the answer is B. The answer is A.", MAGNETS, 0),  # a rejected statement, then one
    ("It is not West Virginia; it is Maryland.", VA, 2),  # a rejected option of several words
]


@pytest.mark.parametrize(("text", "choices", "expected"), DETAILS)
def test_extraction_details(text, choices, expected):
    assert extract_choice(text, choices) == expected


def test_normalize_of_nothing_is_empty():
    assert normalize("") == normalize(None) == ""


@pytest.mark.parametrize(("reasoning", "expected"), [
    ("Louisiana is in the south. West Virginia is in the north.", 0),  # the last sentence decides
    ("Arizona is south, so West Virginia is north.", 0),  # the clause after "so"
    ("Louisiana lies south; Thus West Virginia is farthest north.", 0),  # in any case
])
def test_reasoning_choice_reads_the_last_sentence_and_clause(reasoning, expected):
    assert reasoning_choice(f"<REASONING> {reasoning} </REASONING>", STATES) == expected
