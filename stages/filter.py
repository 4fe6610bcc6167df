"""filter: image questions only, every record validated, one Parquet table keyed by pid.

    python stages/filter.py
"""

import _project  # noqa: F401  (first: this project's svrd, not another clone's)

from svrd.filter import filter_records, open_source
from svrd.io import write_json
from svrd.params import load_params
from svrd.stage import FILTERED, METRICS, REJECTS, SAMPLE_DIR, run


def main() -> None:
    params = load_params()
    data, opts = params.data, params.filter
    path = str(SAMPLE_DIR) if data.source == "sample" else data.path
    records, total = open_source(data.source, path, data.hf_config)
    summary = filter_records(records, FILTERED, REJECTS, opts.images_only, opts.on_invalid,
                             opts.max_image_pixels, total)
    write_json(METRICS / "filter.json", {"read": summary.read, "kept": summary.kept,
                                         "without_image": summary.without_image, "rejected": summary.rejected})
    print(summary.line())


if __name__ == "__main__":
    run(main)
