"""The hf backend on tiny random teachers of real architectures (LLaVA, Mllama), built offline."""

import json
import sqlite3

import pytest
from teacher_server import make_problems, teach_cfg
from tiny_teachers import build_tiny_llava, build_tiny_mllama

from svrd.teach import teach

BUILDERS = {"llava": build_tiny_llava, "mllama": build_tiny_mllama}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache: dict = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = BUILDERS[arch](tmp_path_factory.mktemp(arch) / "teacher")
        return cache[arch]

    return get


@pytest.mark.parametrize(("arch", "on_disagree"), [("llava", "answer_only"), ("mllama", "answer_only"),
                                                   ("mllama", "drop")])
def test_hf_backend_on_a_tiny_random_teacher(built, tmp_path, arch, on_disagree):
    tiny_teacher = built(arch)
    rows = make_problems(3)
    rows[2]["image"] = None  # a text-only question goes in its own batch
    cfg = teach_cfg(backend="hf", model=str(tiny_teacher), batch_size=2, max_new_tokens=6, on_disagree=on_disagree)
    cache = tmp_path / "c.sqlite"
    result = teach(rows, cfg, cache_path=cache, progress=False)
    m = result.metrics
    assert (m["questions"], m["requests"], m["cached"]) == (3, 3, 0)
    # Random weights write garbage: none of it agrees with the gold answer.
    assert m["agreed"] == 0 and m[{"answer_only": "answer_only", "drop": "dropped"}[on_disagree]] == 3
    if on_disagree == "answer_only":
        assert [r["pid"] for r in result.rows] == ["q0000", "q0001", "q0002"]
        for row in result.rows:
            assert row["outcome"] == "answer_only" and row["correct"] is False
            assert (row["backend"], row["model"]) == ("hf", str(tiny_teacher))
            assert json.loads(row["decoding"]) == {"do_sample": False, "max_new_tokens": 6, "samples": 1,
                                                   "temperature": 0.0}
            assert row["summary"] == row["reasoning"] == ""
    else:
        assert result.rows == []
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 3
    # Greedy and cached: a second run generates nothing and decides the same.
    again = teach(rows, cfg, cache_path=cache, progress=False)
    assert again.metrics["requests"] == 0 and again.metrics["cached"] == 3 and again.rows == result.rows


def test_hf_sampling_with_substitute(built, tmp_path):
    teacher = built("llava")
    rows = make_problems(2)
    cfg = teach_cfg(backend="hf", model=str(teacher), batch_size=2, max_new_tokens=4, samples=2, temperature=1.0,
                    on_disagree="substitute")
    result = teach(rows, cfg, cache_path=tmp_path / "c.sqlite", progress=False)
    assert result.metrics["requests"] == 4 and result.metrics["substituted"] == 2
    for row, rec in zip(result.rows, rows, strict=True):
        assert row["outcome"] == "substituted" and row["conclusion"] == "AB"[rec["answer"]]
