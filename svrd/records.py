"""The problem record: ScienceQA's 13 fields plus pid, split and caption, validated.

The filtered table (data/filtered/problems.parquet) holds exactly PROBLEM_SCHEMA; every later
artifact is keyed by `pid` (a string).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from svrd.errors import RecordError

# The 13 columns of every ScienceQA copy (release problems.json and the Hugging Face copies).
SCIENCEQA_FIELDS = (
    "image", "question", "choices", "answer", "hint", "task", "grade",
    "subject", "topic", "category", "skill", "lecture", "solution",
)
TEXT_FIELDS = ("question", "hint", "task", "grade", "subject", "topic", "category", "skill", "lecture", "solution")
REQUIRED_TEXT = ("question", "subject", "topic", "grade")
MIN_CHOICES, MAX_CHOICES = 2, 5
LETTERS = "ABCDE"

PROBLEM_SCHEMA = pa.schema(
    [
        ("pid", pa.string()),
        ("split", pa.string()),
        ("question", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("answer", pa.int64()),
        ("hint", pa.string()),
        ("image", pa.binary()),  # RGB PNG bytes, null for text-only questions
        ("task", pa.string()),
        ("grade", pa.string()),
        ("subject", pa.string()),
        ("topic", pa.string()),
        ("category", pa.string()),
        ("skill", pa.string()),
        ("lecture", pa.string()),
        ("solution", pa.string()),
        ("caption", pa.string()),
    ]
)
PROBLEM_COLUMNS = tuple(PROBLEM_SCHEMA.names)


def _text(value: Any, pid: str, field: str) -> str:
    """Text fields: None becomes '', bytes must be UTF-8, anything else is an error."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(pid, field, f"text is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not isinstance(value, str):
        raise RecordError(pid, field, f"expected text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates (a JSON "\udcff" escape): Parquet cannot store them
        raise RecordError(pid, field, f"text is not valid UTF-8 ({exc.reason} at character {exc.start})") from None
    if "\ufffd" in value:
        raise RecordError(pid, field, "text holds U+FFFD replacement characters (it was not valid UTF-8)")
    return value


def validate_record(rec: dict) -> dict:
    """Check one record's fields (image handled separately) and return it normalized.

    Raises RecordError naming the pid and the field.
    """
    pid = rec.get("pid")
    if pid is None or str(pid).strip() == "":
        raise RecordError(None, "pid", "missing pid")
    pid = str(pid)
    out = dict(rec)
    out["pid"] = pid
    for field in TEXT_FIELDS + ("caption",):
        out[field] = _text(rec.get(field), pid, field)
    for field in REQUIRED_TEXT:
        if not out[field].strip():
            raise RecordError(pid, field, "is empty")

    choices = rec.get("choices")
    if choices is None or isinstance(choices, (str, bytes)) or not hasattr(choices, "__len__"):
        raise RecordError(pid, "choices", f"expected a list of options, got {type(choices).__name__}")
    choices = [_text(c, pid, "choices") for c in choices]
    if not (MIN_CHOICES <= len(choices) <= MAX_CHOICES):
        raise RecordError(pid, "choices", f"has {len(choices)} options; ScienceQA questions have {MIN_CHOICES} to {MAX_CHOICES}")
    if any(not c.strip() for c in choices):
        raise RecordError(pid, "choices", "an option is empty")
    # Case matters: ScienceQA's capitalization questions offer 'Dear Pablo,' and 'dear Pablo,'.
    if len({c.strip() for c in choices}) != len(choices):
        raise RecordError(pid, "choices", f"options repeat: {choices}")
    out["choices"] = choices

    answer = rec.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, (int,)) and not (hasattr(answer, "__index__")):
        raise RecordError(pid, "answer", f"expected an option index, got {answer!r}")
    answer = int(answer)
    if not 0 <= answer < len(choices):
        raise RecordError(pid, "answer", f"index {answer} is out of range for {len(choices)} options")
    out["answer"] = answer

    split = rec.get("split")
    out["split"] = _text(split, pid, "split") if split is not None else ""
    return out


def letter(index: int) -> str:
    return LETTERS[index]
