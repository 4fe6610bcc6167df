"""Write the embedded sample dataset (ScienceQA release layout) to data/sample.

    python stages/sample.py
"""

import _project  # noqa: F401  (first: this project's svrd, not another clone's)

from svrd.params import load_params
from svrd.sample import generate
from svrd.stage import SAMPLE_DIR, run


def main() -> None:
    params = load_params().data.sample
    summary = generate(SAMPLE_DIR, per_family=params.per_family, seed=params.seed)
    print(f"sample: {summary}")


if __name__ == "__main__":
    run(main)
