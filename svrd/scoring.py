"""ScienceQA's official accuracy breakdown, as a flat dict for `dvc metrics diff`.

Groups (they overlap, so they do not add up): `all`; NAT/SOC/LAN by subject; TXT = non-empty
hint; IMG = image present; NO = neither; G1-6 / G7-12 by grade; and `topic/<topic>` for
every topic present. A prediction that is null (unparseable output), missing (pid absent)
or out of range counts as wrong and is also counted on its own line.

Check: ScienceQA's published GPT-3 predictions score 74.52 on the 361 test pids of the
sample in tests/fixtures (IMG 65.87, NAT 76.34, SOC 70.27), as the official script reports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from svrd.errors import SvrdError
from svrd.io import read_json, write_json
from svrd.records import LETTERS

GROUPS = ("all", "NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")
SUBJECT_GROUPS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
LOW_GRADES = frozenset(f"grade{i}" for i in range(1, 7))
HIGH_GRADES = frozenset(f"grade{i}" for i in range(7, 13))
ALL_SPLITS = (None, "", "all")  # split values meaning "do not restrict"


def has_image(problem: Mapping[str, Any]) -> bool:
    """Image present: "image.png" in the release, PNG bytes in the pipeline's table, True from load_problems."""
    image = problem.get("image")
    return bool(image)


def problem_groups(problem: Mapping[str, Any]) -> list[str]:
    """The group keys a problem counts towards (always including `all` and its topic)."""
    groups = ["all"]
    subject = SUBJECT_GROUPS.get(str(problem.get("subject") or "").strip().lower())
    if subject:
        groups.append(subject)
    text, image = bool(problem.get("hint")), has_image(problem)
    if text:
        groups.append("TXT")
    if image:
        groups.append("IMG")
    if not text and not image:
        groups.append("NO")
    grade = str(problem.get("grade") or "").strip().lower()
    if grade in LOW_GRADES:
        groups.append("G1-6")
    elif grade in HIGH_GRADES:
        groups.append("G7-12")
    topic = str(problem.get("topic") or "").strip()
    if topic:
        groups.append(f"topic/{topic}")
    return groups


def _as_index(value: Any) -> int | None:
    """A prediction as an int; None stays None; anything that is not an integer raises TypeError."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"a prediction must be an option index, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value:  # NaN: pandas' null
            return None
        if value.is_integer():
            return int(value)
    if hasattr(value, "__index__"):
        return int(value.__index__())
    raise TypeError(f"a prediction must be an option index, got {value!r}")


def _outcome(problem: Mapping[str, Any], predictions: Mapping[str, Any]) -> tuple[str, int | None]:
    """('correct' | 'wrong' | 'unparseable' | 'missing' | 'out_of_range', predicted index or None)."""
    pid = str(problem["pid"])
    if pid not in predictions:
        return "missing", None
    try:
        pred = _as_index(predictions[pid])
    except TypeError:
        return "out_of_range", None
    if pred is None:
        return "unparseable", None
    if not 0 <= pred < len(problem["choices"]):
        return "out_of_range", None
    return ("correct" if pred == int(problem["answer"]) else "wrong"), pred


def _acc(correct: int, total: int) -> float | None:
    return round(100.0 * correct / total, 2) if total else None


def score(problems: Iterable[Mapping[str, Any]], predictions: Mapping[str, int | None]) -> dict:
    """The official breakdown over exactly the pids of `problems`.

    Returns {group: {"acc": percent (2 decimals; None for an empty group), "correct", "total"}}
    for every key of GROUPS and every `topic/<topic>` present (sorted), plus the counts
    `unparseable`, `missing` and `out_of_range` (all three also scored as wrong).
    """
    predictions = {str(k): v for k, v in predictions.items()}
    correct: dict[str, int] = dict.fromkeys(GROUPS, 0)
    total: dict[str, int] = dict.fromkeys(GROUPS, 0)
    failures = {"unparseable": 0, "missing": 0, "out_of_range": 0}
    seen: set[str] = set()
    for problem in problems:
        pid = str(problem["pid"])
        if pid in seen:
            raise SvrdError(f"pid {pid} appears twice among the problems to score")
        seen.add(pid)
        outcome, _ = _outcome(problem, predictions)
        if outcome in failures:
            failures[outcome] += 1
        for group in problem_groups(problem):
            total[group] = total.get(group, 0) + 1
            correct[group] = correct.get(group, 0) + (outcome == "correct")
    out: dict[str, Any] = {}
    topics = sorted(g for g in total if g.startswith("topic/"))
    for group in (*GROUPS, *topics):
        out[group] = {"acc": _acc(correct[group], total[group]), "correct": correct[group], "total": total[group]}
    out.update(failures)
    return out


def confusion(problems: Iterable[Mapping[str, Any]], predictions: Mapping[str, int | None]) -> list[dict]:
    """One row per problem, {"pid", "gold": letter, "predicted": letter or "none"}, for a DVC confusion plot.

    Null, missing and out-of-range predictions are all "none".
    """
    predictions = {str(k): v for k, v in predictions.items()}
    rows = []
    for problem in problems:
        _, pred = _outcome(problem, predictions)
        rows.append({
            "pid": str(problem["pid"]),
            "gold": LETTERS[int(problem["answer"])],
            "predicted": LETTERS[pred] if pred is not None else "none",
        })
    return rows


# ---------------------------------------------------------------- loading

def _restrict_split(problems: list[dict], split: str | None, pid_splits: dict | None, source: Path) -> list[dict]:
    if split in ALL_SPLITS:
        return problems
    if pid_splits is not None and split in pid_splits:
        wanted = {str(p) for p in pid_splits[split]}
        return [p for p in problems if p["pid"] in wanted]
    if any(p.get("split") for p in problems):
        return [p for p in problems if p.get("split") == split]
    raise SvrdError(f"{source}: cannot restrict to split {split!r}: records have no 'split' field "
                    "and there is no pid_splits.json naming it (use --split all to score every record)")


def _load_release(path: Path, split: str | None) -> list[dict]:
    try:
        raw = read_json(path)
    except json.JSONDecodeError as exc:
        raise SvrdError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise SvrdError(f"{path}: expected a ScienceQA problems.json mapping pid -> record")
    problems = []
    for pid, rec in raw.items():
        rec = dict(rec)
        rec["pid"] = str(pid)
        problems.append(rec)
    splits_path = path.parent / "pid_splits.json"
    pid_splits = read_json(splits_path) if splits_path.exists() else None
    return _restrict_split(problems, split, pid_splits, path)


def _load_parquet(path: Path, split: str | None) -> list[dict]:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet")
    names = set(dataset.schema.names)
    needed = {"pid", "choices", "answer"}
    if not needed <= names:
        raise SvrdError(f"{path}: not a problems table (missing columns {sorted(needed - names)})")
    columns: dict[str, Any] = {
        name: pc.field(name)
        for name in ("pid", "split", "choices", "answer", "hint", "grade", "subject", "topic")
        if name in names
    }
    if "image" in names:
        # Only whether each row has an image: the bytes are never materialized as a column.
        columns["image"] = pc.invert(pc.is_null(pc.field("image")))
    rows = dataset.to_table(columns=columns).to_pylist()
    for row in rows:
        row["pid"] = str(row["pid"])
        row["image"] = bool(row.get("image"))
    return _restrict_split(rows, split, None, path)


def load_problems(path: str | os.PathLike, split: str | None = "test") -> list[dict]:
    """Problems to score: a release folder, a problems.json file, or a problems Parquet table.

    `split` restricts them (via pid_splits.json when it names the split, else the records'
    `split` field); None or "all" keeps every record. From Parquet, `image` is True/False
    (whether the row has an image), never the bytes.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "problems.json").exists():
            path = path / "problems.json"
        else:
            raise SvrdError(f"{path}: no problems.json in this folder")
    if not path.exists():
        raise SvrdError(f"{path}: no such file")
    if path.suffix == ".json":
        problems = _load_release(path, split)
    elif path.suffix in (".parquet", ".pq"):
        problems = _load_parquet(path, split)
    else:
        raise SvrdError(f"{path}: expected a folder, a problems.json or a .parquet table")
    if not problems:
        raise SvrdError(f"{path}: no problems in split {split!r}")
    return problems


def _prediction_value(value: Any, pid: str, source: Path) -> int | None:
    try:
        return _as_index(value)
    except TypeError:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise SvrdError(f"{source}: pid {pid}: prediction {value!r} is not an option index or null") from None


def load_predictions(
    path: str | os.PathLike, model: str | None = None, problems: Iterable[Mapping[str, Any]] | None = None
) -> dict[str, int | None]:
    """pid -> predicted option index (None: unparseable output).

    Reads the official results JSON ({"results": {pid: index}}, or a bare {pid: index}
    mapping) or the pipeline's predictions Parquet (columns pid, choice; when it has a
    `model` column with several models, `model` picks one). Given `problems` (their choices
    read free text), also the answer files of svrd.answer_files: LLaVA's answers JSONL,
    lmms-eval's logged samples, pid,answer CSV/JSONL.
    """
    return read_predictions(path, model, problems)[0]


def read_predictions(
    path: str | os.PathLike, model: str | None = None, problems: Iterable[Mapping[str, Any]] | None = None
) -> tuple[dict[str, int | None], str | None]:
    """load_predictions, plus a summary line for answer files read as free text (else None)."""
    from svrd import answer_files

    path = Path(path)
    if not path.exists():
        raise SvrdError(f"{path}: no such file")
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        if "pid" not in names or "choice" not in names:
            raise SvrdError(f"{path}: a predictions table needs columns pid and choice (has {names})")
        rows = pq.read_table(path, columns=[c for c in ("pid", "choice", "model") if c in names]).to_pylist()
        if "model" in names:
            models = sorted({str(r["model"]) for r in rows})
            if model is not None:
                rows = [r for r in rows if str(r["model"]) == model]
                if not rows:
                    raise SvrdError(f"{path}: no predictions of model {model!r} (has {models})")
            elif len(models) > 1:
                raise SvrdError(f"{path}: holds predictions of several models {models}; pick one with --model")
        out: dict[str, int | None] = {}
        for r in rows:
            pid = str(r["pid"])
            if pid in out:
                raise SvrdError(f"{path}: pid {pid} is predicted twice")
            out[pid] = _prediction_value(r["choice"], pid, path)
        return out, None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise answer_files.unrecognised(path, "not a UTF-8 text file") from None
    raw = None if path.suffix.lower() == ".csv" else answer_files.parse_json_document(text)
    if isinstance(raw, dict) and not answer_files.is_record(raw):
        results = raw.get("results", raw)
        if not isinstance(results, dict):
            raise answer_files.unrecognised(path, "its \"results\" is not a mapping pid -> choice index")
        try:
            return {str(pid): _prediction_value(v, str(pid), path) for pid, v in results.items()}, None
        except SvrdError as exc:  # e.g. a one-line JSONL of some other tool
            raise SvrdError(f"{exc}; svrd score reads {answer_files.FORMATS_READ}") from None
    answers = answer_files.read_answers(path, problems)
    return answers.predictions, answers.summary()


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("problems", help="release folder, problems.json, or problems Parquet table")
    parser.add_argument("predictions", help="official results JSON, predictions Parquet (pid, choice), LLaVA's answers "
                        "JSONL, lmms-eval's logged samples JSONL, or a pid,answer CSV (see svrd/answer_files.py)")
    parser.add_argument("--split", default="test", help="split to score (default: test; 'all' for every record)")
    parser.add_argument("--model", default=None, help="model name, when the predictions table holds several")
    parser.add_argument("--out", default=None, help="also write the metrics JSON here")


def run(args: argparse.Namespace) -> int:
    problems = load_problems(args.problems, split=args.split)
    predictions, summary = read_predictions(args.predictions, model=args.model, problems=problems)
    if summary:
        print(f"svrd score: {summary}", file=sys.stderr)
    metrics = score(problems, predictions)
    if args.out:
        write_json(args.out, metrics)
    print(json.dumps(metrics, indent=2))
    return 0
