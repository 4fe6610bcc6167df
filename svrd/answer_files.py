"""Answer files other tools write, read into pid -> option index (None: no option could be read).

`svrd score` reads these besides the official results JSON and the pipeline's Parquet (both in
svrd.scoring). The format is recognised from the content (a `.csv` suffix means CSV):

- LLaVA's ScienceQA answers file (llava/eval/model_vqa_science.py), JSONL:
  {"question_id": pid, "prompt", "text": free text, "answer_id", "model_id", "metadata"}.
- lmms-eval's logged samples (`--log_samples`, `<date>_samples_<task>.jsonl`), JSONL:
  {"doc_id", "target", "filtered_resps", "resps"?, "doc"? (dropped since lmms-eval 0.4), ...};
  `filtered_resps` is [text] (flattened to text since 0.7). `doc_id` is the row of the task's
  test split (lmms-lab/ScienceQA, config ScienceQA-IMG for `scienceqa_img`, ScienceQA-FULL for
  `scienceqa`), which is svrd's id rule for Hugging Face copies: pid = "hf-test-{doc_id:06d}".
  Score them against problems read from that copy; when the samples still carry `doc`, its
  question and choices are checked against the problem's.
- Plain tables: CSV with a header `pid,answer` (free text or a letter) or `pid,choice` (option
  index), or JSONL / a JSON list of {"pid", "answer"} or {"pid", "choice"} records.

Free text goes through svrd.answers.extract_choice with the problem's choices, so an answer
that names no option is None (unparseable, scored as wrong). Answers for pids that are not
among the problems being scored are left out; a file none of whose answers matches one is an
error, as is a duplicate pid or a record without its fields.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svrd.answers import extract_choice
from svrd.errors import SvrdError

FORMATS_READ = (
    "the official results JSON ({\"results\": {pid: index}} or {pid: index}), "
    "a predictions Parquet (pid, choice), "
    "LLaVA's answers JSONL (question_id, text), "
    "lmms-eval's logged samples JSONL (doc_id, filtered_resps), "
    "JSONL or CSV with pid and answer (text) or pid and choice (index)"
)
LMMS_EVAL_SPLIT = "test"  # every lmms-eval ScienceQA task scores the test split


@dataclass
class AnswerFile:
    """What was read: the format's name, pid -> index or None, and counts for the summary line."""

    format: str
    predictions: dict[str, int | None]
    records: int  # answers in the file
    free_text: int  # of those scored, how many were free text run through extract_choice

    @property
    def unparseable(self) -> int:
        return sum(v is None for v in self.predictions.values())

    def summary(self) -> str:
        line = f"read {self.records} answers ({self.format}), {len(self.predictions)} for the problems scored"
        if self.free_text:
            line += f"; {self.unparseable} name no option (unparseable, counted as wrong)"
        return line


def unrecognised(path: Path, why: str) -> SvrdError:
    return SvrdError(f"{path}: {why}; svrd score reads {FORMATS_READ}")


# ---------------------------------------------------------------- parsing the file

def parse_json_document(text: str) -> Any:
    """The file as one JSON document, or None when it is not one (JSONL, CSV, garbage)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _jsonl_records(path: Path, text: str) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise unrecognised(path, f"line {number} is not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise unrecognised(path, f"line {number} is not a JSON object")
        records.append(record)
    if not records:
        raise unrecognised(path, "no records")
    return records


def _csv_records(path: Path, text: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    if "pid" not in header or not ({"answer", "choice"} & set(header)):
        raise unrecognised(path, f"a CSV needs a header with pid and answer (or choice), has {header}")
    reader.fieldnames = header
    return list(reader)


def is_record(obj: Any) -> bool:
    """Whether a JSON object is one answer record (rather than a pid -> index mapping)."""
    return isinstance(obj, dict) and bool({"question_id", "doc_id", "pid"} & set(obj))


def read_records(path: Path, text: str) -> list[dict]:
    """The file's records: CSV rows, JSONL lines, or the items of a JSON list."""
    if path.suffix.lower() == ".csv":
        return _csv_records(path, text)
    document = parse_json_document(text)
    if isinstance(document, list):
        if not all(isinstance(r, dict) for r in document) or not document:
            raise unrecognised(path, "a JSON list must hold answer records (objects)")
        return document
    if document is not None and not is_record(document):
        raise unrecognised(path, "a JSON object that is neither a results mapping nor an answer record")
    return _jsonl_records(path, text)


# ---------------------------------------------------------------- one reader per format

def _field(record: Mapping[str, Any], name: str, number: int, path: Path) -> Any:
    if name not in record:
        raise unrecognised(path, f"record {number} has no '{name}' field (has {sorted(record)})")
    return record[name]


def _llava(records: list[dict], path: Path) -> Iterable[tuple[str, Any]]:
    for number, record in enumerate(records, 1):
        yield str(_field(record, "question_id", number, path)), _field(record, "text", number, path)


def _lmms_response(record: Mapping[str, Any], number: int, path: Path) -> Any:
    """The text lmms-eval scored: filtered_resps ([text], or text since 0.7), else resps ([[text]])."""
    value = record["filtered_resps"] if "filtered_resps" in record else _field(record, "resps", number, path)
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise unrecognised(path, f"record {number} (doc_id {record.get('doc_id')}): expected one generated "
                                 f"text, got {json.dumps(value)[:80]} (a loglikelihood task?)")
    return value


def _lmms_eval(records: list[dict], path: Path) -> Iterable[tuple[str, Any]]:
    for number, record in enumerate(records, 1):
        doc_id = _field(record, "doc_id", number, path)
        if isinstance(doc_id, bool) or not isinstance(doc_id, int):
            raise unrecognised(path, f"record {number}: doc_id {doc_id!r} is not a row number")
        yield f"hf-{LMMS_EVAL_SPLIT}-{doc_id:06d}", _lmms_response(record, number, path)


def _plain(records: list[dict], path: Path) -> Iterable[tuple[str, Any]]:
    column = "answer" if "answer" in records[0] else "choice"
    for number, record in enumerate(records, 1):
        yield str(_field(record, "pid", number, path)).strip(), _field(record, column, number, path)


def _detect(records: list[dict], path: Path) -> tuple[str, Callable, bool]:
    """(format name, reader, whether answers are free text) from the first record's keys."""
    keys = set(records[0])
    if {"question_id", "text"} <= keys:
        return "LLaVA answers JSONL", _llava, True
    if "doc_id" in keys and ({"filtered_resps", "resps"} & keys):
        return "lmms-eval logged samples", _lmms_eval, True
    if "pid" in keys and "answer" in keys:
        return "pid,answer table", _plain, True
    if "pid" in keys and "choice" in keys:
        return "pid,choice table", _plain, False
    raise unrecognised(path, f"records with fields {sorted(keys)} are not a known answer format")


# ---------------------------------------------------------------- answers -> option indices

def _option_index(value: Any, pid: str, path: Path) -> int | None:
    """An option index from a `choice` cell: an int, a digit string, or empty/null for none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise SvrdError(f"{path}: pid {pid}: choice {value!r} is not an option index (use an 'answer' column for text)")


def _check_doc(record: Mapping[str, Any], problem: Mapping[str, Any], pid: str, path: Path) -> None:
    """lmms-eval samples that still carry their doc: it must be the problem the pid names."""
    doc = record.get("doc")
    if not isinstance(doc, dict):
        return
    same = list(doc.get("choices") or []) == list(problem["choices"])
    if same and problem.get("question") is not None and "question" in doc:
        same = doc["question"] == problem["question"]
    if not same:
        raise SvrdError(
            f"{path}: doc_id {record.get('doc_id')} is not problem {pid} (question or choices differ): "
            "lmms-eval's doc_id is the row of lmms-lab/ScienceQA's test split, so score the samples against "
            "problems read from the same copy and config (data.source=hf)")


def read_answers(path: str | Path, problems: Iterable[Mapping[str, Any]] | None) -> AnswerFile:
    """Read an answer file (see the module docstring) against the problems being scored
    (their choices read the free text; None only tells whether the format is known)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Excel CSV) is not content
    except UnicodeDecodeError:
        raise unrecognised(path, "not a UTF-8 text file") from None
    records = read_records(path, text)
    name, reader, free_text = _detect(records, path)
    if problems is None:
        raise SvrdError(f"{path}: a {name} is read against the problems being scored; pass them")
    by_pid = {str(p["pid"]): p for p in problems}
    predictions: dict[str, int | None] = {}
    seen: set[str] = set()
    first_pid = None
    for record, (pid, value) in zip(records, reader(records, path), strict=True):
        if pid in seen:
            raise SvrdError(f"{path}: pid {pid} is answered twice")
        seen.add(pid)
        first_pid = first_pid or pid
        problem = by_pid.get(pid)
        if problem is None:
            continue
        if reader is _lmms_eval:
            _check_doc(record, problem, pid, path)
        if not free_text:
            predictions[pid] = _option_index(value, pid, path)
        elif value is None or isinstance(value, str):
            predictions[pid] = extract_choice(value or "", list(problem["choices"]))
        else:
            raise SvrdError(f"{path}: pid {pid}: answer {value!r} is not text")
    if not predictions:
        hint = ("; lmms-eval's doc_id is the row of lmms-lab/ScienceQA's test split, so score them against "
                "problems read from that copy (data.source=hf)") if reader is _lmms_eval else ""
        raise SvrdError(f"{path}: none of its {len(records)} answers is for a problem being scored "
                        f"(answer pids look like {first_pid!r}, problem pids like {next(iter(by_pid), None)!r}){hint}")
    return AnswerFile(name, predictions, len(records), len(predictions) if free_text else 0)
