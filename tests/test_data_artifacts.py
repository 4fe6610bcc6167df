"""Nothing under data/ (the DVC data outputs) holds where or when it was made: no absolute path of
the project or of the work cache, and no timing column in the predictions. Scans the session's
`dvc repro` (tests/conftest.py); the scan itself takes a second."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("pipeline")]

BINARY = (".safetensors", ".png")


def strings_in(path) -> list[str]:
    """The text of a data file: every string value of a Parquet table, else the file as text."""
    if path.suffix == ".parquet":
        values = []
        for row in pq.read_table(path).to_pylist():
            values.extend(str(v) for v in row.values() if isinstance(v, str))
        return values
    return [path.read_text(encoding="utf-8", errors="replace")]


def test_no_data_output_names_a_machine_path(pipeline_run):
    project, root = pipeline_run["project"], pipeline_run["root"]
    markers = {str(project), str(root), str(project.resolve()), str(root.resolve())}
    files = [p for p in (project / "data").rglob("*") if p.is_file() and p.suffix not in BINARY]
    assert len(files) > 20
    leaks = [f"{p.relative_to(project)}: {m}" for p in files for text in strings_in(p) for m in markers if m in text]
    assert not leaks


def test_predictions_hold_no_timings_and_the_metrics_do(pipeline_run):
    project = pipeline_run["project"]
    for preds in (project / "data" / "infer").glob("*/predictions.parquet"):
        assert not {"seconds", "wall_s", "time"} & set(pq.read_schema(preds).names), preds
        metrics = json.loads((project / "metrics" / "infer" / f"{preds.parent.name}.json").read_text())
        assert set(metrics["seconds_per_question"]) == {"total", "mean", "p50", "p90"}
