"""prefer: DPO on the distilled student's own reasoning chains (after distill).

Samples `prefer.samples` chains per training question from data/distill/model, judges each
against the gold answer, pairs correct with incorrect chains on questions whose share of
correct chains lies in [prefer.min_correct, prefer.max_correct], and trains with DPO against a
frozen copy of the distilled student. A killed run resumes sampling where it stopped.

    python stages/prefer.py
    dvc exp run -S prefer.beta=0.2
"""

from pathlib import Path

import _project  # noqa: F401  (first: this project's svrd, not another clone's)

from svrd.io import read_rows, write_json
from svrd.params import load_params
from svrd.prefer import run_prefer, summary_line
from svrd.split import refuse_test_pids
from svrd.stage import DISTILLED, METRICS, SPLIT_DIR, cache_dir, run

PREFER_DIR = Path("data/prefer")


def main() -> None:
    params = load_params()
    train_rows = read_rows(SPLIT_DIR / "train.parquet")
    refuse_test_pids([r["pid"] for r in train_rows], {r["pid"]: r.get("split") for r in train_rows}, stage="prefer")
    stats = run_prefer(params, train_rows, DISTILLED, PREFER_DIR / "model", PREFER_DIR / "pairs.parquet",
                       cache_dir() / "prefer")
    write_json(METRICS / "prefer.json", stats)
    print(summary_line(stats))


if __name__ == "__main__":
    run(main)
