"""Stage prefer: pairing rules, DPO on two tiny VLM families, and resume after SIGKILL during sampling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from svrd.examples import build_target
from svrd.infer import examples_from_rows
from svrd.io import write_table
from svrd.models import freeze, load_model, load_processor, vision_encoder
from svrd.params import load_params
from svrd.prefer import (
    PAIR_SCHEMA,
    dpo_dataset,
    frozen_copy,
    in_band,
    judge,
    make_pairs,
    run_prefer,
    sample_chains,
    select_pairs,
    train_dpo,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import build_idefics3, build_llava, corpus, fake_rationales, fake_records  # noqa: E402

CHOICES = ["red", "green", "blue", "yellow"]


def chain(text: str) -> dict:
    return {"text": text, "new_tokens": len(text.split()), "finished": True}


def conclusion(option: str) -> dict:
    return chain(f"<REASONING> It looks {option}. </REASONING> <CONCLUSION> {option} </CONCLUSION>")


# ------------------------------------------------------------------------------ pairing (no model)

def test_pairs_only_from_chains_that_differ_in_correctness():
    chains = [conclusion("red"), conclusion("blue"), chain("<REASONING> no idea"), conclusion("red"),
              chain("<CONCLUSION> red or blue </CONCLUSION>")]
    judged = judge(chains, CHOICES, answer=0)
    assert [c["correct"] for c in judged] == [True, False, False, True, False]
    assert [c["choice"] for c in judged] == [0, 2, None, 0, None]
    pairs = make_pairs("p1", judged, max_pairs=10)
    assert pairs, "a question with correct and incorrect chains gives pairs"
    for pair in pairs:
        assert pair["chosen_choice"] == 0  # chosen: the gold answer
        assert pair["rejected_choice"] != 0  # rejected: another option, or unparseable (None)
        assert pair["chosen"] != pair["rejected"]
    # the two identical correct chains count once: 1 distinct correct x 3 distinct incorrect
    assert len(pairs) == 3
    assert {p["rejected_choice"] for p in pairs} == {2, None}


def test_all_right_or_all_wrong_gives_no_pairs():
    assert make_pairs("p", judge([conclusion("red")] * 4, CHOICES, 0), 3) == []
    assert make_pairs("p", judge([conclusion("blue"), conclusion("green")], CHOICES, 0), 3) == []


def test_max_pairs_cap_spreads_over_distinct_chains():
    good = [chain(f"<REASONING> red, reason {i} </REASONING> <CONCLUSION> red </CONCLUSION>") for i in range(4)]
    bad = [chain(f"<REASONING> blue, reason {i} </REASONING> <CONCLUSION> blue </CONCLUSION>") for i in range(4)]
    judged = judge(good + bad, CHOICES, 0)
    for m in (1, 2, 3, 4):
        pairs = make_pairs("p", judged, max_pairs=m, seed=7)
        assert len(pairs) == m
        # m <= 4 distinct chains on each side: no chain is used twice
        assert len({p["chosen"] for p in pairs}) == m and len({p["rejected"] for p in pairs}) == m
    assert len(make_pairs("p", judged, max_pairs=100)) == 16  # every combination, once
    assert make_pairs("p", judged, 3, seed=1) == make_pairs("p", judged, 3, seed=1)  # seeded


def test_band_filtering():
    def judged(n_correct: int, k: int = 20) -> list[dict]:
        chains = [chain(f"<CONCLUSION> red </CONCLUSION> {i}") for i in range(n_correct)]
        chains += [chain(f"<CONCLUSION> blue </CONCLUSION> {i}") for i in range(k - n_correct)]
        return judge(chains, CHOICES, 0)

    # paper's band: 25%-85% correct (of 20: 5..17), both ends included
    assert [n for n in range(21) if in_band(judged(n), 0.25, 0.85)] == list(range(5, 18))
    by_pid = {"low": judged(4), "edge_low": judged(5), "mid": judged(10), "edge_high": judged(17),
              "high": judged(18), "none": judged(0), "all": judged(20)}
    pairs, counts = select_pairs(by_pid, 0.25, 0.85, max_pairs=3)
    assert {p["pid"] for p in pairs} == {"edge_low", "mid", "edge_high"}
    assert counts["questions_kept"] == 3 and counts["pairs"] == 9
    assert counts["questions_sampled"] == 7 and counts["chains"] == 140
    assert counts["questions_all_correct"] == 1 and counts["questions_none_correct"] == 1
    assert counts["correct_share"] == round((4 + 5 + 10 + 17 + 18 + 20) / 140, 4)


# ------------------------------------------------------------------------------ tiny students

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def records():
    return fake_records(6)


@pytest.fixture(scope="module")
def students(tmp_path_factory, records):
    """Two families: the project's tiny LLaVA and an Idefics3 (SmolVLM's architecture)."""
    root = tmp_path_factory.mktemp("students")
    texts = corpus(records)
    build_llava(root / "llava", texts)
    build_idefics3(root / "idefics3", texts)
    return {"llava": root / "llava", "idefics3": root / "idefics3"}


def prefer_cfg(**overrides):
    base = {"prefer.lr": 1e-2, "prefer.train_batch_size": 2, "prefer.max_new_tokens": 8, "prefer.samples": 2,
            "prefer.batch_size": 2, "prefer.max_questions": 4}
    return load_params(REPO / "params.yaml").with_overrides({**base, **overrides})


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_batched_sampling_gives_k_chains_per_question(students, records, family):
    model, processor = load_model(str(students[family])), load_processor(str(students[family]))
    examples = examples_from_rows(records[:3])
    seen = []
    chains = sample_chains(model, processor, examples, k=3, temperature=1.0, top_p=1.0, max_new_tokens=6,
                           batch_size=2, seed=0, on_batch=lambda done: seen.append(sorted(done)), progress=False)
    assert list(chains) == [ex.pid for ex in examples]
    assert all(len(c) == 3 for c in chains.values())
    assert all(0 < ch["new_tokens"] <= 6 or ch["finished"] for c in chains.values() for ch in c)
    assert sorted(p for batch in seen for p in batch) == sorted(chains) and len(seen) == 2  # 2 + 1 questions


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_dpo_moves_policy_text_weights_only(students, records, family):
    path = str(students[family])
    model, processor = load_model(path), load_processor(path)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    ref = frozen_copy(model)
    freeze(model, vision=True)
    rats = fake_rationales(records)
    pairs = []
    for r in records[:4]:
        wrong = (r["answer"] + 1) % len(r["choices"])
        good = build_target(r, rats[r["pid"]], "rationale", "text")
        bad = build_target({**r, "answer": wrong}, rats[r["pid"]], "rationale", "text")
        pairs.append({"pid": r["pid"], "chosen": good, "rejected": bad})
    dataset = dpo_dataset(processor, {ex.pid: ex for ex in examples_from_rows(records)}, pairs)
    stats = train_dpo(model, ref, processor, dataset, prefer_cfg().prefer, students[family].parent / f"dpo-{family}")
    assert stats["steps"] == 2 and stats["pairs"] == 4

    ref_state, policy = ref.state_dict(), model.state_dict()
    assert all(torch.equal(ref_state[k], original[k]) for k in original), "the reference model must not change"
    vision_params = {id(p) for p in vision_encoder(model).parameters()}
    vision_keys = [name for name, p in model.named_parameters() if id(p) in vision_params]
    assert vision_keys and all(k in original for k in vision_keys)
    assert all(torch.equal(policy[k], original[k]) for k in vision_keys), "the vision encoder is frozen"
    text_keys = [k for k in original if ("language_model" in k or "text_model" in k) and k not in vision_keys]
    changed = [k for k in text_keys if not torch.equal(policy[k], original[k])]
    assert len(changed) >= len(text_keys) // 2, f"text weights barely moved: {changed}"


# ------------------------------------------------------------------------------ the stage

def make_project(root: Path, student: Path, records: list[dict], overrides: dict) -> Path:
    """A stage working directory: params.yaml, data/split/train.parquet, data/distill/model."""
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    write_table(root / "data/split/train.parquet", records)
    shutil.copytree(student, root / "data/distill/model")
    return root


STAGE_FAST = {"prefer.max_new_tokens": 8, "prefer.samples": 2, "prefer.batch_size": 1, "prefer.max_questions": 5,
              "prefer.min_correct": 0.0, "prefer.max_correct": 1.0, "prefer.lr": 1e-3, "prefer.train_batch_size": 4}

# Runs the stage with sampling stalled (forever) from the third batch on: two questions are
# persisted when the test kills it.
STALLING_DRIVER = """
import runpy, sys, time
import svrd.prefer as prefer
original, calls = prefer.sample_batch, [0]
def stalling(*args, **kwargs):
    calls[0] += 1
    if calls[0] > 2:
        time.sleep(600)
    return original(*args, **kwargs)
prefer.sample_batch = stalling
sys.argv = ["prefer.py"]
runpy.run_path({stage!r}, run_name="__main__")
"""


def test_stage_resumes_after_sigkill_without_resampling(tmp_path, students, records, monkeypatch):
    project = make_project(tmp_path / "project", students["llava"], records, STAGE_FAST)
    cache = tmp_path / "cache"
    env = {**os.environ, "SVRD_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    driver = STALLING_DRIVER.format(stage=str(REPO / "stages" / "prefer.py"))
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        logs: list[Path] = []
        while time.monotonic() < deadline:
            logs = list(cache.glob("prefer/*/chains.jsonl"))
            if logs and len(logs[0].read_text().splitlines()) >= 2:
                break
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            time.sleep(0.1)
        else:
            pytest.fail("sampling never persisted two questions")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = {json.loads(line)["pid"]: json.loads(line)["chains"] for line in logs[0].read_text().splitlines()}
    assert len(before) == 2

    # The resumed run (in-process, same cache) samples only the questions not yet finished.
    import svrd.prefer as prefer

    sampled: list[str] = []
    original = prefer.sample_batch

    def counting(model, processor, examples, *args, **kwargs):
        sampled.extend(ex.pid for ex in examples)
        return original(model, processor, examples, *args, **kwargs)

    monkeypatch.setattr(prefer, "sample_batch", counting)

    # A random student is (almost) never right: judge each question's first chain correct so that
    # every question gives a pair and the whole path (DPO, save, reload) runs.
    def first_chain_right(chains, choices, answer):
        judged = original_judge(chains, choices, answer)
        return [{**c, "choice": answer if i == 0 else (answer + 1) % len(choices), "correct": i == 0}
                for i, c in enumerate(judged)]

    original_judge = prefer.judge
    monkeypatch.setattr(prefer, "judge", first_chain_right)
    monkeypatch.chdir(project)
    params = load_params(project / "params.yaml")
    stats = run_prefer(params, records, project / "data/distill/model", project / "data/prefer/model",
                       project / "data/prefer/pairs.parquet", cache / "prefer", progress=False)
    wanted = [r["pid"] for r in records[:5]]
    assert sorted(sampled) == sorted(set(wanted) - set(before)), "finished questions must not be re-sampled"
    assert stats["resumed"] == 2 and stats["questions_sampled"] == 5 and stats["chains"] == 10
    after = {json.loads(line)["pid"]: json.loads(line)["chains"] for line in logs[0].read_text().splitlines()}
    assert sorted(after) == sorted(wanted) and all(after[pid] == before[pid] for pid in before)

    table = pq.read_table(project / "data/prefer/pairs.parquet")
    assert table.schema.equals(PAIR_SCHEMA)
    distinct = sum(len({c["text"] for c in after[pid]}) == 2 for pid in wanted)  # identical chains make no pair
    assert table.num_rows == stats["pairs"] == stats["questions_kept"] == distinct > 0
    assert stats["trained"] and stats["dpo"]["steps"] >= 1
    assert (project / "data/prefer/model/model.safetensors").is_file()
    assert load_processor(str(project / "data/prefer/model")) is not None
    trained = load_model(str(project / "data/prefer/model")).state_dict()
    distilled = load_model(str(project / "data/distill/model")).state_dict()
    assert trained.keys() == distilled.keys()
    assert any(not torch.equal(trained[k], distilled[k]) for k in trained if "language_model" in k)
    assert all(torch.equal(trained[k], distilled[k]) for k in trained if "vision_tower" in k)


def test_no_pairs_copies_the_distilled_model(tmp_path, students, records):
    # A band that only all-correct questions satisfy can never give a pair.
    project = make_project(tmp_path / "project", students["llava"], records,
                           {**STAGE_FAST, "prefer.min_correct": 1.0, "prefer.max_correct": 1.0,
                            "prefer.batch_size": 5})
    params = load_params(project / "params.yaml")
    stats = run_prefer(params, records, project / "data/distill/model", project / "out/model",
                       project / "out/pairs.parquet", tmp_path / "cache", progress=False)
    assert stats["pairs"] == 0 and stats["trained"] is False and "copied unchanged" in stats["note"]
    src, dst = project / "data/distill/model", project / "out/model"
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in dst.iterdir())
    assert all((src / p.name).read_bytes() == (dst / p.name).read_bytes() for p in src.iterdir())
    table = pq.read_table(project / "out/pairs.parquet")
    assert table.num_rows == 0 and table.schema.equals(PAIR_SCHEMA)
