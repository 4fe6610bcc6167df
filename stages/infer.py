"""infer: batched decoding (greedy, or sampled for self-consistency and stage beam search) of the test split by one model of `infer.models`.

    python stages/infer.py distilled
"""

import sys

import _project  # noqa: F401  (first: this project's svrd, not another clone's)

from svrd.infer.run import run_inference
from svrd.infer.schema import PREDICTION_SCHEMA
from svrd.io import read_rows, write_json, write_table
from svrd.params import load_params
from svrd.stage import INFER_DIR, METRICS, SPLIT_DIR, run


def main() -> None:
    name = sys.argv[1]
    params = load_params()
    test_rows = read_rows(SPLIT_DIR / "test.parquet")
    rows, stats = run_inference(params, name, test_rows)
    write_table(INFER_DIR / name / "predictions.parquet", rows, PREDICTION_SCHEMA)
    write_json(METRICS / "infer" / f"{name}.json", stats)
    print(f"infer {name}: {stats['questions']} questions in {stats['wall_s']} s ({stats['questions_per_s']} q/s, "
          f"{stats['tokens_per_s']} tokens/s), {stats['unparseable']} unparseable, {stats['resumed']} resumed")
    if stats["mode"] == "likelihood":
        print(f"infer {name}: likelihood answers; the written conclusion differs on {stats['text_differs']} "
              f"and is unparseable on {stats['text_unparseable']}")
    if stats["mode"] == "self_consistency":
        print(f"infer {name}: majority of {stats['samples']} sampled chains; {stats['ties']} ties "
              f"({stats['ties_unresolved']} unresolved), {stats['no_vote']} without a vote, "
              f"mean agreement {stats['mean_agreement']}")
    if stats["mode"] == "stage_beam":
        print(f"infer {name}: stage beam, {stats['candidates']} candidates per stage judged by {stats['judge']}; "
              f"{stats['beam_generated']} candidates, {stats['beam_judged']} judge calls, "
              f"{stats['cost_vs_greedy']}x greedy's tokens")


if __name__ == "__main__":
    run(main)
