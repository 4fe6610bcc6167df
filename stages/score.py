"""score: accuracy overall, per topic and in ScienceQA's official groups for every model of
`infer.models`, rationale quality, the Table 1 report and the plots; with `score.open` set, the
open-ended answers' Table 2 too (metrics/open.json and the report).

    python stages/score.py
"""

import _project  # noqa: F401  (first: this project's svrd, not another clone's)

from svrd.evaluate import score_models
from svrd.params import load_params
from svrd.stage import run


def main() -> None:
    params = load_params()
    for line in score_models(list(params.infer.models), params.score.open):
        print(line)


if __name__ == "__main__":
    run(main)
