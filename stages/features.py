"""features: the frozen vision encoder's features of every train/val image, computed once per student
(train.cache_vision_features); distill then trains on them instead of pixel_values, with the same loss.

    dvc exp run -S train.cache_vision_features=true

Its params are only what changes the features, so a sweep over other training params
(`dvc exp run -S train.lr=...`) reuses them. DVC has no conditional stages: with the cache off the
stage still runs, so the DAG is the same both ways, but it loads nothing and writes only a manifest
saying disabled. A killed run resumes from the work cache in $SVRD_CACHE_DIR (svrd.features).
"""

import _project  # noqa: F401  (first: this project's svrd, not another clone's)

from svrd.features import check_params, write_disabled, write_features
from svrd.models import load_student
from svrd.params import load_params
from svrd.stage import FEATURES, SPLIT_DIR, cache_dir, run


def main() -> None:
    params = load_params()
    s, t = params.student, params.train
    check_params(s, t)
    if not t.cache_vision_features:
        write_disabled(FEATURES)
        print(f"features: disabled (train.cache_vision_features false), only {FEATURES}/manifest.json written")
        return
    model, processor, _, _ = load_student(s, t.precision)
    m = write_features(model, processor, {split: SPLIT_DIR / f"{split}.parquet" for split in ("train", "val")},
                       FEATURES, cache_dir() / "features", student=s.model)
    print(f"features: {m['images']} images of {sum(m['rows'].values())} train/val rows ({m['computed']} computed, "
          f"{m['reused']} from the work cache, {m['seconds']} s), taken {m['taken']}, {m['dtype']} "
          f"{'x'.join(map(str, m['entry_shape'] or []))} each, {m['bytes'] / 2**20:.1f} MiB -> "
          f"{FEATURES}/{m['fingerprint']}/")


if __name__ == "__main__":
    run(main)
