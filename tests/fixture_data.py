"""The real ScienceQA sample fixture (CC BY-NC-SA 4.0; see fixtures/scienceqa-sample/README.md).

problems.json is stored gzipped (2.5 MiB of JSON is 0.4 MiB compressed); `scienceqa_sample()`
unpacks the release folder once per test process, so tests read the original layout."""

from __future__ import annotations

import atexit
import functools
import gzip
import shutil
import tempfile
from pathlib import Path

PACKED = Path(__file__).parent / "fixtures" / "scienceqa-sample"


@functools.cache
def scienceqa_sample() -> Path:
    root = Path(tempfile.mkdtemp(prefix="scienceqa-sample-"))
    atexit.register(shutil.rmtree, root, True)
    release = root / "scienceqa-sample"
    shutil.copytree(PACKED, release, ignore=shutil.ignore_patterns("*.gz"))
    with gzip.open(PACKED / "problems.json.gz", "rb") as src, open(release / "problems.json", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return release
