"""End to end: the real pipeline under DVC in a temporary copy of the repo."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from project_copy import run

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("pipeline")]

STAGES = ["sample", "filter", "split", "tiny_student", "teach", "features", "distill", "prefer",
          "infer@base", "infer@distilled", "infer@preferred", "score"]
MODELS = ("base", "distilled", "preferred")


def ran_stages(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def test_repro_runs_every_stage_and_writes_the_artifacts(pipeline_run):
    project, out = pipeline_run["project"], pipeline_run["repro"].stdout
    assert ran_stages(out) == STAGES
    for line in ("filter: read", "split: train", "teach:", "features: disabled", "distill:", "infer distilled:",
                 "score distilled:"):
        assert line in out
    assert json.loads((project / "data/features/manifest.json").read_text())["enabled"] is False
    problems = pq.read_table(project / "data/filtered/problems.parquet")
    assert problems.num_rows == 60 and len(set(problems.column("pid").to_pylist())) == 60
    splits = {s: set(pq.read_table(project / f"data/split/{s}.parquet").column("pid").to_pylist())
              for s in ("train", "val", "test")}
    assert not (splits["train"] & splits["test"]) and not (splits["val"] & splits["test"])
    rationales = pq.read_table(project / "data/teach/rationales.parquet").to_pylist()
    assert {r["pid"] for r in rationales} == splits["train"] | splits["val"]
    assert all(r["raw"].startswith("<SUMMARY>") and r["correct"] for r in rationales)
    for name in MODELS:
        preds = pq.read_table(project / f"data/infer/{name}/predictions.parquet").to_pylist()
        assert [p["pid"] for p in preds] == pq.read_table(project / "data/split/test.parquet").column("pid").to_pylist()
    scores = json.loads((project / "metrics/scores.json").read_text())
    assert set(scores) == set(MODELS)
    assert scores["distilled"]["all"]["total"] == len(splits["test"])
    report = (project / "metrics/report.md").read_text()
    assert "GEO" in report and "distilled" in report and "base" in report
    assert (project / "dvclive/distill/plots/metrics/train/loss.tsv").exists()
    status = run(["dvc", "status"], project, pipeline_run["env"]).stdout
    assert "up to date" in status


def test_exp_run_lr_reruns_only_what_depends_on_training(pipeline_run):
    project, env = pipeline_run["project"], pipeline_run["env"]
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], project, env)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], project, env)
    out = run(["dvc", "exp", "run", "-S", "train.lr=1.4e-5"], project, env).stdout
    assert ran_stages(out) == ["distill", "prefer", "infer@distilled", "infer@preferred", "score"]
    diff = run(["dvc", "params", "diff", "--json"], project, env).stdout
    assert "train.lr" in diff
    show = run(["dvc", "exp", "show", "--json"], project, env).stdout
    assert '"lr": 1.4e-05' in show and "metrics/scores.json" in show
    metrics_diff = run(["dvc", "metrics", "diff", "--all"], project, env).stdout
    assert "metrics/distill.json" in metrics_diff


def test_push_then_pull_teach_restores_the_rationales(pipeline_run, tmp_path):
    project, env = pipeline_run["project"], pipeline_run["env"]
    run(["dvc", "remote", "add", "-f", "-d", "shared", str(tmp_path / "remote")], project, env)
    run(["dvc", "push"], project, env)
    before = (project / "data/teach/rationales.parquet").read_bytes()
    shutil.rmtree(project / ".dvc/cache")
    (project / "data/teach/rationales.parquet").unlink()
    run(["dvc", "pull", "teach"], project, env)
    assert (project / "data/teach/rationales.parquet").read_bytes() == before
    status = run(["dvc", "status", "teach"], project, env).stdout
    assert "up to date" in status


def test_cached_vision_features_give_the_live_distill_loss(pipeline_run):
    """`-S train.cache_vision_features=true`: the features stage fills data/features, distill trains on
    it with the live run's losses; a later sweep over the learning rate reuses it."""
    project, env = pipeline_run["project"], pipeline_run["env"]
    run(["dvc", "repro", "distill"], project, env)  # the live run of the workspace's params (earlier tests)
    live = json.loads((project / "metrics/distill.json").read_text())
    out = run(["dvc", "exp", "run", "-S", "train.cache_vision_features=true", "distill"], project, env).stdout
    assert ran_stages(out) == ["features", "distill"]
    cached = json.loads((project / "metrics/distill.json").read_text())
    manifest = json.loads((project / "data/features/manifest.json").read_text())
    assert manifest["enabled"] and manifest["mode"] == "vision"  # projector trains (student.freeze_projector false)
    assert cached["vision_cache"]["images"] == manifest["images"] > 0
    # Both rounded to 4 places. In fp32 the two runs agree to that; under bf16 autocast (`auto` on a CPU with
    # native bf16) the live run computes the vision tower in bf16 and the features stage in fp32, so they
    # agree to bf16's precision (a wrong or missing feature moves the loss by far more).
    tol = 1e-4 if live["mixed_precision"] == "no" else 2e-3 * abs(live["train_loss"])
    for key in ("train_loss", "val_loss"):
        assert abs(cached[key] - live[key]) <= tol, (key, live[key], cached[key], live["mixed_precision"])
    out = run(["dvc", "exp", "run", "-S", "train.cache_vision_features=true", "-S", "train.lr=1e-4", "distill"],
              project, env).stdout
    assert ran_stages(out) == ["distill"]


def _sometimes_wrong(pid, sample: int, prompt: str) -> str:
    """A teacher that is right when the gold answer is A, right only on its second sample when it is
    B, and always wrong otherwise, its reasoning then naming the wrong option."""
    from teacher_server import GOLD_RE, llava_cot_answer

    gold = GOLD_RE.search(prompt).group(1)
    wrong = "B" if gold == "A" else "A"
    if gold == "A" or (gold == "B" and sample == 1):
        return llava_cot_answer(gold)
    return llava_cot_answer(wrong).replace("leads to one answer.", f"so the answer is ({wrong}).")


def test_a_teacher_that_is_sometimes_wrong_through_teach_and_distill(tmp_path):
    """`dvc repro distill` with teach.backend=openai against the local fake server: agreement on the
    first or second sample, substitution of the gold letter, and the contradiction count all run
    end to end, and distill trains on every row. Expected values come from the responder's rule."""
    from project_copy import copy_project, run_env
    from teacher_server import FakeTeacher

    with FakeTeacher(responder=_sometimes_wrong) as server:
        project = copy_project(tmp_path / "project", {
            "teach.backend": "openai", "teach.model": "fake-cot", "teach.base_url": server.base_url,
            "teach.samples": 2, "teach.temperature": 0.7, "teach.concurrency": 4})
        env = run_env(tmp_path)
        env["OPENAI_API_KEY"] = "not-a-real-key"
        out = run(["dvc", "repro", "distill"], project, env).stdout
        requests = len(server.requests)
    assert ran_stages(out) == ["sample", "filter", "split", "tiny_student", "teach", "features", "distill"]
    taught = {r["pid"]: r for s in ("train", "val")
              for r in pq.read_table(project / f"data/split/{s}.parquet", columns=["pid", "answer"]).to_pylist()}
    rows = {r["pid"]: r for r in pq.read_table(project / "data/teach/rationales.parquet").to_pylist()}
    assert set(rows) == set(taught)  # substitute keeps every question
    by_gold = {g: [p for p, r in taught.items() if min(r["answer"], 2) == g] for g in (0, 1, 2)}
    assert all(by_gold.values())  # every path is taken
    for pid, row in rows.items():
        gold = taught[pid]["answer"]
        if gold == 0:
            assert (row["outcome"], row["sample"], row["correct"]) == ("agreed", 0, True)
        elif gold == 1:
            assert (row["outcome"], row["sample"], row["correct"]) == ("agreed", 1, True)
        else:
            assert (row["outcome"], row["correct"], row["letter"], row["contradicts"]) == ("substituted", False, "A", True)
            assert row["conclusion"].strip() == "ABCDE"[gold]  # the gold letter pasted under the rationale
    metrics = json.loads((project / "metrics/teach.json").read_text())
    n_wrong_first = len(by_gold[1]) + len(by_gold[2])
    assert (metrics["agreed"], metrics["substituted"], metrics["contradicting"]) == (
        len(by_gold[0]) + len(by_gold[1]), len(by_gold[2]), len(by_gold[2]))
    assert metrics["requests"] == requests == len(taught) + n_wrong_first  # round 2 asks only the disagreeing
    assert json.loads((project / "metrics/distill.json").read_text())["examples"] == sum(
        r["split"] == "train" for r in rows.values())
