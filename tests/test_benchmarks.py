"""Smoke tests of the benchmark runner (`python -m benchmarks`) and the filter/split benchmark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks.__main__ import discover, follows_convention, rows_of  # noqa: E402
from benchmarks.common import ROW_KEYS, format_table, peak_rss_bytes  # noqa: E402


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_help_and_list():
    proc = _bench("--help")
    assert proc.returncode == 0, proc.stderr
    assert "--only" in proc.stdout and "--quick" in proc.stdout and "filter_split_fullsize" in proc.stdout
    proc = _bench("--list")
    assert proc.returncode == 0, proc.stderr
    assert "filter_split_fullsize" in proc.stdout and "run(quick) rows" in proc.stdout
    proc = _bench("--only", "no_such_benchmark")
    assert proc.returncode == 2 and "unknown benchmark" in proc.stderr


def test_discovery_skips_helpers():
    names = discover()
    assert "filter_split_fullsize" in names and not {"common", "__main__", "__init__"} & set(names)
    assert follows_convention("filter_split_fullsize")


def test_filter_split_quick_rows():
    from benchmarks.filter_split_fullsize import QUICK, run

    rows = run(quick=True)
    assert [r["name"] for r in rows] == ["filter_split.wall", "filter_split.peak_rss"]
    for r in rows:
        assert set(ROW_KEYS) <= set(r)
        assert r["measured"] > 0 and r["baseline"] > 0
        assert r["ratio"] == pytest.approx(r["measured"] / r["baseline"], abs=1e-3)  # a share of the budget
        assert r["passed"] is None and r["note"].startswith(f"QUICK {QUICK['problems']} problems")
    assert "filter_split.wall" in format_table(rows)


def test_a_script_outside_the_convention_is_quoted():
    result = {"name": "legacy", "status": "ok", "rc": 0, "wall": 1.0, "rows": None,
              "lines": ["warming up", "throughput ratio 32 vs 1: 24.0x median (target >= 20x) -> PASS", "bye"]}
    (r,) = rows_of(result, quick=False)
    assert r["passed"] is True and "24.0x" in r["note"]
    (r,) = rows_of({**result, "status": "failed", "rc": 3, "lines": ["Traceback", "ImportError: x"]}, quick=False)
    assert r["passed"] is False and "FAILED rc 3" in r["note"] and "ImportError" in r["note"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only")
def test_peak_memory_of_a_child_is_its_own():
    """ru_maxrss of a child includes its parent's memory at fork; peak_rss_bytes must not."""
    code = "from benchmarks.common import peak_rss_bytes; print(peak_rss_bytes())"
    ballast = bytearray(300 * 1024 * 1024)
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))  # touch every page: resident
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    del ballast
    assert int(out.stdout) < 200 * 1024 * 1024 < peak_rss_bytes()


# --- benchmarks/gpu_check.py: prepared on CPU for whoever first has a GPU ---------------------------


def test_gpu_check_architectures_have_the_published_sizes():
    """The configs written in the script give the parameter counts the models are named for
    (SmolVLM-256M; SmolVLM-Instruct, 2.2B): counted on the meta device, nothing allocated."""
    from benchmarks.gpu_check import SMOLVLM_2B, SMOLVLM_256M, count_parameters

    assert abs(count_parameters(SMOLVLM_256M) / 256e6 - 1) < 0.01
    assert 2.2e9 <= count_parameters(SMOLVLM_2B) < 2.3e9


def test_gpu_check_tiny_runs_the_whole_script(capsys):
    """--tiny: build, save, load_student, a distill step, a forced-length decode, and the table."""
    import torch

    from benchmarks.gpu_check import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (result,) = main(["--tiny", "--models", "smolvlm-256m", "--steps", "1", "--batch", "2", "--gen-batch", "2",
                          "--new-tokens", "3"])
    finally:
        torch.set_num_threads(threads)
    assert result["model"] == "smolvlm-256m-tiny" and result["steps"] == 1 and result["batch"] == 2
    # tiny images: 640x480 -> longest edge 128 -> 4 x 3 tiles of 32 px + a global view = 13 x 16 tokens
    assert result["image_tokens"] == 13 * 16
    assert result["train_tokens_per_s"] > 0 and result["gen_tokens_per_s"] > 0 and result["new_tokens"] == 3
    out = capsys.readouterr().out
    assert "train_peak_gib" in out.splitlines()[-3] and out.splitlines()[-1].startswith("smolvlm-256m-tiny")
