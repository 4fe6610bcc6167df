"""split: train / val / test tables with disjoint pids (official or stratified by topic).

    python stages/split.py
"""

import _project  # noqa: F401  (first: this project's svrd, not another clone's)

from svrd.io import write_json
from svrd.params import load_params
from svrd.split import split_file
from svrd.stage import FILTERED, METRICS, SPLIT_DIR, run


def main() -> None:
    p = load_params().split
    counts = split_file(FILTERED, SPLIT_DIR, p.strategy, tuple(p.fractions), p.seed,
                        p.max_train, p.max_val, p.max_test)
    write_json(METRICS / "split.json", counts)
    dup = counts.pop("duplicates")
    twins = dup["test_in_train"] + dup["test_in_val"]
    print("split: " + " / ".join(f"{k} {v}" for k, v in counts.items()) + f" ({p.strategy}); "
          f"{twins} test questions have a twin in train/val by content, {dup['val_in_train']} val in train"
          + (f" (e.g. pid {dup['examples'][0][0]} = pid {dup['examples'][0][1]})" if dup["examples"] else ""))


if __name__ == "__main__":
    run(main)
