"""The four-stage rationale: <SUMMARY>, <CAPTION>, <REASONING>, <CONCLUSION>.

`parse_rationale` reads what models actually write (LLaVA-CoT puts spaces inside tags,
small students forget closing tags or stop mid-stage); `format_rationale` writes the
canonical form used as the student's training target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from svrd.records import LETTERS

STAGES = ("summary", "caption", "reasoning", "conclusion")
CONCLUSION_STYLES = ("letter", "letter_text", "text")

# An opening or closing stage tag, tolerant of spaces and case: "<SUMMARY>", "< /Caption >", "</ CONCLUSION>".
TAG_RE = re.compile(r"<\s*(/?)\s*(summary|caption|reasoning|conclusion)\s*>", re.IGNORECASE)


@dataclass(frozen=True)
class Rationale:
    summary: str
    caption: str
    reasoning: str
    conclusion: str
    well_formed: bool

    def stage(self, name: str) -> str:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; expected one of {STAGES}")
        return getattr(self, name)

    def body(self) -> str:
        """The rationale's text without tags: the non-empty stages joined by blank lines."""
        return "\n\n".join(s for s in (self.summary, self.caption, self.reasoning, self.conclusion) if s)


def stage_segments(text: str) -> list[tuple[str, str, bool]]:
    """Every stage occurrence in `text`, in order, as (stage, content, closed).

    A stage runs from its opening tag to its closing tag; without one, to the next opening
    tag (of any stage) or the end of the text. A closing tag of a different stage also ends
    the open stage (marked not closed). Text outside stages and stray closing tags are ignored.
    """
    segments: list[tuple[str, str, bool]] = []
    current: str | None = None
    start = 0
    for m in TAG_RE.finditer(text or ""):
        closing, name = m.group(1) == "/", m.group(2).lower()
        if closing:
            if current is not None:
                segments.append((current, text[start:m.start()].strip(), current == name))
                current = None
            continue
        if current is not None:
            segments.append((current, text[start:m.start()].strip(), False))
        current, start = name, m.end()
    if current is not None:
        segments.append((current, text[start:].strip(), False))
    return segments


def _tag_sequence(text: str) -> list[tuple[bool, str]]:
    return [(m.group(1) == "/", m.group(2).lower()) for m in TAG_RE.finditer(text or "")]


def parse_rationale(text: str) -> Rationale:
    """Split a model output into its four stages (missing stages are '').

    A stage that occurs more than once keeps its first non-empty occurrence. `well_formed` is
    True only when the tags are exactly <S></S><C></C><R></R><CO></CO> in that order (each
    stage once, opened and closed) and every stage has content.
    """
    found: dict[str, str] = {}
    for name, content, _closed in stage_segments(text):
        if not found.get(name):
            found[name] = content
    expected = [(closing, name) for name in STAGES for closing in (False, True)]
    well_formed = _tag_sequence(text) == expected and all(found.get(name) for name in STAGES)
    return Rationale(
        summary=found.get("summary", ""),
        caption=found.get("caption", ""),
        reasoning=found.get("reasoning", ""),
        conclusion=found.get("conclusion", ""),
        well_formed=well_formed,
    )


def strip_tags(text: str) -> str:
    """The text with every stage tag removed (whitespace around tags collapsed)."""
    return re.sub(r"\s*\n\s*\n\s*", "\n\n", TAG_RE.sub("\n\n", text or "")).strip()


def format_rationale(summary: str, caption: str, reasoning: str, conclusion: str) -> str:
    """The canonical four-stage text, one stage per line."""
    parts = []
    for name, content in zip(STAGES, (summary, caption, reasoning, conclusion), strict=True):
        tag = name.upper()
        parts.append(f"<{tag}> {(content or '').strip()} </{tag}>")
    return "\n".join(parts)


def format_conclusion(index: int, choices: list[str], style: str) -> str:
    """The conclusion for option `index`: "B" (letter), "B. attract" (letter_text) or "attract" (text)."""
    if style not in CONCLUSION_STYLES:
        raise ValueError(f"unknown conclusion style {style!r}; expected one of {CONCLUSION_STYLES}")
    if isinstance(index, bool) or not 0 <= int(index) < len(choices) or index >= len(LETTERS):
        raise ValueError(f"option index {index!r} is out of range for {len(choices)} options")
    index = int(index)
    text = choices[index].strip()
    if style == "letter":
        return LETTERS[index]
    if style == "letter_text":
        return f"{LETTERS[index]}. {text}"
    return text
