"""Which option a model's output chose, or None when it committed to none.

The published SVRD code took the last capital letter of the output ("Illinois" read as
"I") or compared the text after <CONCLUSION> as a string ("B." and "(B)" failed). Here an
answer is read in tiers, most explicit first, and the reader refuses to guess: a letter
that is not among the options, two different options, or nothing recognisable all give
None, which the scorer counts as wrong and reports as unparseable.

Tiers, applied to the <CONCLUSION> stage when the output has one, else to the whole text
(an output with other stage tags but no conclusion, e.g. cut off by the token limit, is
read for tier 1 only):
1. answer statements: "The answer is (B).", "Answer: B", "correct option is B",
   "Conclusion: B" (in the whole text the last one that names an option wins; inside a
   conclusion they must agree);
2. the text is a bare choice ("B", "(B)", "B.") or starts with a choice marker
   ("B. attract", "B: attract", "B) attract", "(B) attract"; "B attract" only when the words
   after the letter are option B's text, so "A magnet ..." is an article, not option A);
3. the text equals an option's text (normalized: case, punctuation, spacing);
4. choice markers anywhere ("(B)", "Option B", "B is correct"; inside a conclusion also a
   lone capital letter followed by punctuation or the end), all naming the same option;
5. exactly one option's text is mentioned (an option mentioned only inside a longer
   option, "Virginia" inside "West Virginia", does not count).
A capital letter followed by more letters ("Illinois") is never a letter choice.

Rejected options are never read as chosen: an option named after a negation in the same clause
("not A", "the answer isn't B", "the magnets do not attract", "rather than repel") or before
"is not/wrong/incorrect" is left out of every tier, so "The magnets do not attract." is None
and "Not B, it is A" is A. A letter whose own words name another option ("A. attract" when A is
repel, "repel (A)" in a conclusion) is a contradiction and gives None.
"""

from __future__ import annotations

import re

from svrd.rationale import parse_rationale, stage_segments
from svrd.records import LETTERS

_REFUSE = -1  # a tier found an answer that cannot be scored: stop and return None

# What introduces an answer statement; the option follows.
_STATEMENT_RE = re.compile(
    r"(?:\b(?:final\s+)?answer\b(?:\s+(?:is|would\s+be|should\s+be|must\s+be|will\s+be))?"
    r"|\b(?:correct|right|best)\s+(?:option|choice|answer)\s+(?:is|would\s+be)"
    r"|\bconclusion\s*:)"
    r"\s*(?:[:=\-]\s*)?(?:(?:option|choice)\b\s*:?\s*)?",
    re.IGNORECASE,
)
# A letter at the start of a string, optionally bracketed or in markdown/LaTeX decoration.
_LEAD_LETTER_RE = re.compile(r"[\s*_\"'`$]*(?:\\boxed\{\s*)?(\(|\[)?\s*([A-Za-z])\s*(\)|\])?(?![A-Za-z0-9'’])")
_BARE_RE = re.compile(r"\(?\[?([A-Za-z])\]?\)?[.:!]?")
_MARKER_RES = (
    re.compile(r"(?<![A-Za-z0-9])\(([A-Z])\)"),
    re.compile(r"\b(?i:option|choice)\s*[:#]?\s*\(?([A-Z])\)?(?![A-Za-z0-9'’])"),
    re.compile(r"(?<![A-Za-z0-9'’.])([A-Z])\s+is\s+(?:the\s+)?(?:correct|right|best|answer)\b"),
)
# Two letters joined as alternatives ("A or B", "B and C", "A/B"): both count as named.
_LETTER_PAIR_RE = re.compile(r"(?<![A-Za-z0-9'’.])([A-Z])\s*(?:,|/|\bor\b|\band\b)\s*\(?([A-Z])(?![A-Za-z0-9'’])")
# A lone capital letter followed by punctuation or the end ("... so B." or "B, because"),
# trusted only inside a conclusion.
_LONE_LETTER_RE = re.compile(r"(?<![A-Za-z0-9'’.\-])([A-Z])(?=\s*$|[.,;:!?)\]](?:\s|$))")
_TAIL_CHARS = 400  # how far after "the answer is" to look (keeps long degenerate outputs linear)
_DECORATION = " \t\r\n*_\"'`"
# Words that reject the option named right after them, within the same clause.
_NEGATION_RE = re.compile(
    r"(?:\b(?:not|never|cannot|neither|nor|without|except|instead\s+of|rather\s+than|other\s+than)|n['’]t)\b",
    re.IGNORECASE,
)
_NEGATION_REACH = 5  # words between a negation and the option it rejects ("don't think the answer is B")
# ... or right after them: "A is not correct", "repel is wrong".
_REJECTED_AFTER_RE = re.compile(
    r"[\s)\]]*(?:is|are|would\s+be)\s+(?:not\b|never\b|incorrect|wrong)|[\s)\]]*isn['’]t", re.IGNORECASE
)
_CLAUSE_END_RE = re.compile(r"(?<!\d)[.;:!?,](?!\d)|\n")
_FILLER_RE = re.compile(
    r"^(?:(?:so|thus|therefore|hence)\s+)?(?:the\s+)?(?:(?:correct|final|best|right)\s+)?"
    r"(?:answer|option|choice)\s+(?:is\s+)?"
)


def normalize(text: str) -> str:
    """Lower case, punctuation as spaces (decimal points kept), single spaces."""
    text = re.sub(r"[^\w\s.]|_", " ", (text or "").lower())
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)
    return " ".join(text.split())


def _strip_article(text: str) -> str:
    return re.sub(r"^(?:the|a|an)\s+", "", text)


def _rejected(text: str, start: int, end: int) -> bool:
    """Whether the option named at text[start:end] is negated rather than chosen."""
    clause = _CLAUSE_END_RE.split(text[:start])[-1]
    if _NEGATION_RE.search(" ".join(clause.split()[-_NEGATION_REACH:])):
        return True
    return _REJECTED_AFTER_RE.match(text, end) is not None


def _option_spans(text: str, option: str) -> list[tuple[int, int]]:
    """Where the option's words occur in `text` (case, punctuation and spacing ignored)."""
    words = normalize(option).split()
    if not words:
        return []
    between = r"(?:[^\w.]|_|\.(?!\d)|(?<!\d)\.)+"  # what normalize() turns into spaces
    pattern = r"(?<!\w)" + between.join(re.escape(w) for w in words) + r"(?!\w)"
    return [m.span() for m in re.finditer(pattern, text, re.IGNORECASE)]


def _rejected_options(text: str, choices: list[str]) -> set[int]:
    """Options named after a negation somewhere in `text` ("do not attract", "not repel")."""
    return {i for i, choice in enumerate(choices)
            if any(_rejected(text, s, e) for s, e in _option_spans(text, choice))}


def _letter_index(letter: str, choices: list[str]) -> int:
    index = ord(letter.upper()) - ord("A")
    return index if 0 <= index < min(len(choices), len(LETTERS)) else _REFUSE


def _lead_letter(text: str, choices: list[str], allow_lower: bool) -> int | None:
    """The choice named by a letter at the very start of `text`, if it is one.

    An unbracketed letter counts when followed by the end, punctuation and a space, a dash,
    or the option's own text ("B attract"); "A magnet" and "Illinois" do not count.
    """
    m = _LEAD_LETTER_RE.match(text)
    if m is None:
        return None
    opened, letter, closed = m.group(1), m.group(2), m.group(3)
    if opened and not closed:
        return None
    if closed:
        if not letter.isupper() and not opened:
            return None
        return _with_label(_letter_index(letter, choices), text[m.end():], choices)
    if not letter.isupper() and not allow_lower:
        return None
    rest = text[m.end():].lstrip("*_\"'`}$")
    if rest.strip() == "" or re.match(r"[.,;:!?]+(?:\s|$)|\s*[-–—]\s", rest):
        return _with_label(_letter_index(letter, choices), rest, choices)
    index = _letter_index(letter, choices)
    if index != _REFUSE and rest[:1].isspace():
        words, option = normalize(rest), normalize(choices[index])
        if option and (words == option or words.startswith(option + " ")):
            return index
    return None


def _with_label(index: int, rest: str, choices: list[str]) -> int:
    """`index`, unless the words after the letter ("A. attract") name or reject another option.

    Only the rest of the letter's line and sentence is read: "Repel would need like poles." on
    the next line is an explanation, not the letter's label."""
    if index == _REFUSE:
        return index
    if _REJECTED_AFTER_RE.match(rest):  # "(B) is wrong"
        return _REFUSE
    label = re.split(r"(?<=[a-z0-9)])[.!?](?:\s|$)|\n", rest.lstrip(" .,;:!?)]-–—"), maxsplit=1)[0]
    if not label.strip():
        return index
    if index in _rejected_options(label, choices):
        return _REFUSE
    named = _text_choice(label, choices)
    return _REFUSE if named is not None and named != index else index


def _mentioned(text: str, choices: list[str]) -> list[int]:
    """Options whose normalized text occurs in `text` as whole words, ignoring occurrences
    that lie inside an occurrence of a longer option."""
    norm = normalize(text)
    spans: dict[int, list[tuple[int, int]]] = {}
    for i, choice in enumerate(choices):
        option = normalize(choice)
        if not option:
            continue
        found = [m.span() for m in re.finditer(rf"(?<!\w){re.escape(option)}(?!\w)", norm)]
        if found:
            spans[i] = found
    out = []
    rejected = _rejected_options(text, choices) if spans else set()
    for i, found in spans.items():
        others = [s for j, sp in spans.items() if j != i for s in sp]
        if i not in rejected and any(
            not any(a <= s and e <= b and (b - a) > (e - s) for a, b in others) for s, e in found
        ):
            out.append(i)
    return out


def _exact_text(text: str, choices: list[str]) -> int | None:
    norm = normalize(text)
    if not norm:
        return None
    norms = [normalize(c) for c in choices]
    for candidate in (norm, _FILLER_RE.sub("", norm)):
        hits = [i for i, n in enumerate(norms) if n and n == candidate]
        if len(hits) == 1:
            return hits[0]
        bare = _strip_article(candidate)
        hits = [i for i, n in enumerate(norms) if n and _strip_article(n) == bare]
        if len(hits) == 1:
            return hits[0]
    return None


def _text_choice(text: str, choices: list[str]) -> int | None:
    exact = _exact_text(text, choices)
    if exact is not None:
        return exact
    mentioned = _mentioned(text, choices)
    return mentioned[0] if len(mentioned) == 1 else None


def _statement_choices(text: str, choices: list[str]) -> list[int]:
    """The option (or _REFUSE) each answer statement names, in order; undetermined ones left out."""
    found = []
    for m in _STATEMENT_RE.finditer(text):
        if _rejected(text, m.start(), m.start()):  # "I don't think the answer is B" names no answer
            continue
        tail = text[m.end():m.end() + _TAIL_CHARS]
        index = _lead_letter(tail, choices, allow_lower=True)
        if index is None:
            line = tail.split("\n", 1)[0]
            sentence = re.split(r"(?<=[a-z0-9)])[.!?](?:\s|$)", line, maxsplit=1)[0]
            index = _text_choice(sentence, choices)
            if index is not None and _option_letters(sentence, choices) - {LETTERS[index]}:
                index = _REFUSE  # "Answer: repel (A)" when A is attract
        if index is not None:
            found.append(index)
    return found


def _bare_or_lead(text: str, choices: list[str]) -> int | None:
    clean = text.strip(_DECORATION)
    if _LETTER_PAIR_RE.match(clean):
        return _REFUSE
    m = _BARE_RE.fullmatch(clean)
    if m is not None:
        return _letter_index(m.group(1), choices)
    index = _lead_letter(clean, choices, allow_lower=False)
    if index is not None and index != _REFUSE:
        # "(A) attract (B) repel" or "A) attract" over "B) repel" echoes the options; it does not choose A.
        others = {m.group(1) for pattern in _MARKER_RES for m in pattern.finditer(clean)}
        lines = [_lead_letter(line.strip(_DECORATION), choices, allow_lower=False) for line in clean.splitlines()[1:]]
        if others - {LETTERS[index]} or any(i is not None and i != index for i in lines):
            return _REFUSE
    return index


def _letters(text: str, lone_letters: bool) -> set[str]:
    """Letters that choice markers name in `text`, leaving out rejected ones ("not (B)")."""
    found = [m.span(1) for pattern in _MARKER_RES for m in pattern.finditer(text)]
    found += [m.span(g) for m in _LETTER_PAIR_RE.finditer(text) for g in (1, 2)]
    if lone_letters:
        found += [m.span(1) for m in _LONE_LETTER_RE.finditer(text)]
    return {text[s:e] for s, e in found if not _rejected(text, s, e)}


def _option_letters(text: str, choices: list[str]) -> set[str]:
    """Letters of options that choice markers ("(A)", "option A") name in `text`, rejected ones left out."""
    n = min(len(choices), len(LETTERS))
    return {text[m.start(1):m.end(1)] for pattern in _MARKER_RES for m in pattern.finditer(text)
            if ord(m.group(1)) - ord("A") < n and not _rejected(text, m.start(1), m.end(1))}


def _markers(text: str, choices: list[str], lone_letters: bool) -> int | None:
    letters = _letters(text, lone_letters)
    if not letters:
        return None
    if len(letters) > 1:
        return _REFUSE
    return _letter_index(letters.pop(), choices)


def _decide(text: str, choices: list[str], in_conclusion: bool) -> int | None:
    statements = _statement_choices(text, choices)
    if statements:
        if in_conclusion:
            return statements[0] if len(set(statements)) == 1 else _REFUSE
        return statements[-1]
    index = _bare_or_lead(text, choices)
    if index is None and not in_conclusion:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > 1:
            index = _bare_or_lead(lines[-1], choices)
    if index is not None:
        return index
    index = _exact_text(text, choices)
    if index is not None:
        return index
    index = _markers(text, choices, lone_letters=in_conclusion)
    if index is not None:
        if in_conclusion and index != _REFUSE and _text_choice(text, choices) not in (None, index):
            return _REFUSE  # "repel (A)" when A is attract: the letter and its words disagree
        return index
    mentioned = _mentioned(text, choices)
    return mentioned[0] if len(mentioned) == 1 else None


def extract_choice(text: str, choices: list[str]) -> int | None:
    """The index into `choices` that `text` commits to, or None.

    Reads the <CONCLUSION> stage when the output has one (all of them, if repeated: they
    must agree); otherwise the whole text. Never guesses; see the module docstring.
    """
    if not text or not choices or not isinstance(text, str):
        return None
    segments = stage_segments(text)
    conclusions = [content for name, content, _closed in segments if name == "conclusion"]
    if conclusions:
        picks = {_decide(c, choices, in_conclusion=True) for c in conclusions if c.strip()}
        index = picks.pop() if len(picks) == 1 else None
    elif segments:
        # A staged output cut off before its conclusion: only an explicit answer statement counts,
        # never an option the reasoning happens to mention.
        statements = _statement_choices(text, choices)
        index = statements[-1] if statements else None
    else:
        index = _decide(text, choices, in_conclusion=False)
    if index is None or not 0 <= index < len(choices):
        return None
    return index


def reasoning_choice(text: str, choices: list[str]) -> int | None:
    """Which option the <REASONING> stage names, or None.

    An answer statement in the reasoning ("so the answer is B") decides first; otherwise the
    option whose text is the only one mentioned in the last sentence, else in the whole stage.
    """
    if not text or not choices or not isinstance(text, str):
        return None
    reasoning = parse_rationale(text).reasoning
    if not reasoning:
        return None
    statements = [i for i in _statement_choices(reasoning, choices) if i != _REFUSE]
    if statements:
        return statements[-1]
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", reasoning) if s.strip()]
    last = sentences[-1] if sentences else ""
    clause = re.split(r"\b(?:so|therefore|thus|hence|which means)\b", last, flags=re.IGNORECASE)[-1]
    for part in (clause, last, reasoning):
        mentioned = _mentioned(part, choices)
        if len(mentioned) == 1:
            return mentioned[0]
    return None
