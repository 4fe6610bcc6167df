"""The README's "paper's setup in one line" runs as written, on a SmolVLM-256M-shaped student.

The command is read out of README.md (so the two cannot drift); only data.path (a release folder of
real ScienceQA records, tests/fixtures, with 640x480 images drawn here) and student.model (the
narrow SmolVLM-256M-shaped student of tests/real_students.py) are swapped. The release holds a few
questions, so no split.max_* override is needed. Then `dvc exp run` in a temporary copy of the
project: every stage, distill -> infer -> score included. Slow by design (one full pipeline with
SmolVLM's 13-tile images), marked e2e like the other pipeline runs.
"""

from __future__ import annotations

import gzip
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from PIL import Image
from project_copy import FIXTURES, REPO, copy_project, run, run_env, set_params
from real_students import build_smolvlm_256m

from svrd.images import png_bytes

pytestmark = pytest.mark.e2e  # a whole `dvc exp run`: minutes, not seconds

SWAPPED = ("data.path", "student.model")
PER_SPLIT = {"train": 4, "val": 1, "test": 2}


def readme_oneliner() -> list[str]:
    """The `dvc exp run ...` command of README's "The paper's setup (Table 3) in one line" block."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("The paper's setup (Table 3) in one line"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return shlex.split(block.replace("\\\n", " "))


def with_swaps(argv: list[str], swaps: dict[str, str]) -> list[str]:
    out, seen = [], set()
    for arg in argv:
        key = arg.split("=", 1)[0]
        if key in swaps:
            arg, _ = f"{key}={swaps[key]}", seen.add(key)
        out.append(arg)
    assert seen == set(swaps), f"README's one-liner no longer sets {set(swaps) - seen}"
    return out


def small_release(dest: Path) -> Path:
    """A few real ScienceQA image questions per split, in the release layout, with 640x480 images."""
    src = FIXTURES / "scienceqa-sample"
    with gzip.open(src / "problems.json.gz", "rt", encoding="utf-8") as f:
        problems = json.load(f)
    chosen = {}
    for split, n in PER_SPLIT.items():
        pids = [pid for pid, p in problems.items() if p["split"] == split and p["image"]][:n]
        chosen.update({pid: problems[pid] for pid in pids})
    for i, (pid, p) in enumerate(chosen.items()):
        folder = dest / "images" / p["split"] / pid
        folder.mkdir(parents=True)
        (folder / "image.png").write_bytes(png_bytes(Image.new("RGB", (640, 480), (30 * i % 255, 140, 90))))
    (dest / "problems.json").write_text(json.dumps(chosen), encoding="utf-8")
    splits = {s: [pid for pid, p in chosen.items() if p["split"] == s] for s in PER_SPLIT}
    (dest / "pid_splits.json").write_text(json.dumps(splits), encoding="utf-8")
    captions = json.loads((src / "captions.json").read_text(encoding="utf-8"))["captions"]
    (dest / "captions.json").write_text(json.dumps({"captions": {p: captions.get(p, "") for p in chosen}}))
    return dest


def test_readme_paper_oneliner_runs_as_written(tmp_path):
    argv = readme_oneliner()
    assert argv[:3] == ["dvc", "exp", "run"] and "student.model=HuggingFaceTB/SmolVLM-256M-Instruct" in argv
    release = small_release(tmp_path / "release")
    problems = json.loads((release / "problems.json").read_text())
    student = build_smolvlm_256m(tmp_path / "smolvlm", [p["question"] + " " + p["solution"] for p in problems.values()])
    argv = with_swaps(argv, {"data.path": str(release), "student.model": student["path"]})

    project = copy_project(tmp_path / "project")
    env = run_env(tmp_path)
    run(argv, project, env, timeout=600)

    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["student"]["model"] == student["path"] and params["train"]["lr"] == 1.4e-5
    distill = json.loads((project / "metrics" / "distill.json").read_text())
    assert distill["examples"] == PER_SPLIT["train"] and distill["truncated_targets"] == 0
    assert distill["family"] == "idefics3" and distill["image_tokens"] == 832  # 4x3 tiles of 512 px + global, x64
    assert distill["max_length"] > 832  # null: the longest example's real length
    scores = json.loads((project / "metrics" / "scores.json").read_text())
    assert scores  # score ran over the infer outputs
    for name in ("base", "distilled"):
        assert (project / "data" / "infer" / name / "predictions.parquet").is_file()

    # The same student at the old cap: distill stops before training, in one line that names the fix.
    set_params(project / "params.yaml", {"train.max_length": 512})
    proc = __import__("subprocess").run(["python", "stages/distill.py"], cwd=project, env=env, capture_output=True,
                                        text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert lines[-1].startswith("distill: error: pid ") and "train.max_length=512" in lines[-1]
    assert "student.image_tokens" in lines[-1]
