"""split: train / val / test tables with disjoint pids (official or stratified by topic).

    python stages/split.py
"""

from svrd.io import write_json
from svrd.params import load_params
from svrd.split import split_file
from svrd.stage import FILTERED, METRICS, SPLIT_DIR, run


def main() -> None:
    p = load_params().split
    counts = split_file(FILTERED, SPLIT_DIR, p.strategy, tuple(p.fractions), p.seed,
                        p.max_train, p.max_val, p.max_test)
    write_json(METRICS / "split.json", counts)
    print("split: " + " / ".join(f"{k} {v}" for k, v in counts.items()) + f" ({p.strategy})")


if __name__ == "__main__":
    run(main)
