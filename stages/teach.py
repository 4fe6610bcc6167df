"""Stage teach: four-stage teacher rationales for the train and val questions.

    dvc repro teach
    dvc exp run -S teach.backend=openai -S teach.model=Xkev/Llama-3.2V-11B-cot -S teach.base_url=http://localhost:8000/v1

Answers are cached in $SVRD_CACHE_DIR (default .svrd_cache/), keyed by the content of each request
(prompt text, image bytes, model, decoding, sample): a killed run resumes without repeating a
request, and a question changed under the same pid is asked again. The API key is read from the
variable named by teach.api_key_env.
"""

import sys

import _project  # noqa: F401  (first: this project's svrd, not another clone's)

from svrd.errors import SvrdError
from svrd.params import load_params
from svrd.teach import read_problems, teach, write_outputs

SPLITS = ("data/split/train.parquet", "data/split/val.parquet")
RATIONALES, METRICS = "data/teach/rationales.parquet", "metrics/teach.json"


def main() -> int:
    params = load_params("params.yaml").teach
    try:
        result = teach(read_problems(*SPLITS), params)
    except SvrdError as exc:
        print(f"teach: error: {exc}", file=sys.stderr)
        return 2
    write_outputs(result, RATIONALES, METRICS)
    print(result.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
