"""Stage prefer: pairing rules, DPO on two tiny VLM families, and resume after SIGKILL in sampling and in DPO."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from svrd.examples import build_target
from svrd.infer.encoding import examples_from_rows
from svrd.io import write_table
from svrd.models import freeze, load_model, load_processor, vision_encoder
from svrd.params import load_params
from svrd.prefer import (
    PAIR_SCHEMA,
    chain_appender,
    dpo_dataset,
    frozen_copy,
    in_band,
    judge,
    load_chains,
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

# ------------------------------------------------------------------------------ SIGKILL at several points

KILL_PARAMS = {**STAGE_FAST, "prefer.batch_size": 2, "prefer.train_batch_size": 2}  # batches of 2, 2, 1 questions
KILL_QUESTIONS = STAGE_FAST["prefer.max_questions"]


def first_chain_right(chains, choices, answer):
    """A random student is (almost) never right: judge each question's first chain correct and the
    others wrong, so that every question with two distinct chains gives a pair and DPO runs."""
    return [{**c, "choice": answer if i == 0 else (answer + 1) % len(choices), "correct": i == 0}
            for i, c in enumerate(judge(chains, choices, answer))]


# stages/prefer.py judged by first_chain_right, pausing SLOW_S before each sampling batch and after
# each DPO step (whose end it marks in MARKS/dpo-step-N): a kill sent when the chains log or the
# marks reach a point lands there, not a batch or a step later.
KILL_DRIVER = """
import os, runpy, sys, time
from pathlib import Path

sys.path.insert(0, {tests!r})
import svrd.prefer as prefer
from test_prefer import first_chain_right

slow, marks = float(os.environ["SLOW_S"]), Path(os.environ["MARKS"])
sample_batch, train_dpo = prefer.sample_batch, prefer.train_dpo


def slow_sample(*args, **kwargs):
    time.sleep(slow)
    return sample_batch(*args, **kwargs)


def marked_train(*args, **kwargs):
    from trl import DPOTrainer

    step, done = DPOTrainer.training_step, [0]

    def marked_step(self, *a, **k):
        loss = step(self, *a, **k)
        done[0] += 1
        (marks / f"dpo-step-{{done[0]}}").touch()
        time.sleep(slow)
        return loss

    DPOTrainer.training_step = marked_step
    return train_dpo(*args, **kwargs)


prefer.judge, prefer.sample_batch, prefer.train_dpo = first_chain_right, slow_sample, marked_train
sys.argv = ["prefer.py"]
sys.path.insert(0, os.path.dirname({stage!r}))  # as `python stages/prefer.py` does
runpy.run_path({stage!r}, run_name="__main__")
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def log_pids(log: Path) -> list[str]:
    return [json.loads(line)["pid"] for line in log.read_text().splitlines()]


# What does not depend on where a run was killed (resumed, walls and the log's path do).
SAME_STATS = ("questions_sampled", "chains", "correct_share", "unparseable_share", "questions_all_correct",
              "questions_none_correct", "questions_kept", "pairs", "trained")
SAME_DPO = ("train_loss", "steps", "pairs", "rewards_accuracies", "rewards_margins", "rewards_chosen",
            "rewards_rejected")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, students, records, one_torch_thread):
    """The stage never killed (in-process, its own cache): chains log, pairs, model files, stats."""
    import svrd.prefer as prefer

    root = tmp_path_factory.mktemp("prefer-uninterrupted")
    project = make_project(root / "project", students["llava"], records, KILL_PARAMS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prefer, "judge", first_chain_right)
        stats = run_prefer(load_params(project / "params.yaml"), records, project / "data/distill/model",
                           project / "data/prefer/model", project / "data/prefer/pairs.parquet", root / "cache",
                           progress=False)
    return {"stats": stats, "project": project, "chains": Path(stats["chains_log"]).read_bytes(),
            "pairs": sha256(project / "data/prefer/pairs.parquet"),
            "model": file_hashes(project / "data/prefer/model")}


def test_uninterrupted_run_trains_text_weights_in_several_steps(uninterrupted):
    """What the kill tests compare against is a real run: pairs, several DPO steps, vision frozen."""
    stats, project = uninterrupted["stats"], uninterrupted["project"]
    assert stats["trained"] and stats["pairs"] >= 3 and stats["dpo"]["steps"] >= 2  # a kill can land between steps
    table = pq.read_table(project / "data/prefer/pairs.parquet")
    assert table.schema.equals(PAIR_SCHEMA) and table.num_rows == stats["pairs"]
    assert load_processor(str(project / "data/prefer/model")) is not None
    trained = load_model(str(project / "data/prefer/model")).state_dict()
    distilled = load_model(str(project / "data/distill/model")).state_dict()
    assert trained.keys() == distilled.keys()
    assert any(not torch.equal(trained[k], distilled[k]) for k in trained if "language_model" in k)
    assert all(torch.equal(trained[k], distilled[k]) for k in trained if "vision_tower" in k)


@pytest.mark.parametrize("phase,point", [("sampling", 2), ("sampling", 4), ("dpo", 1)],
                         ids=["sampling-1of3-batches", "sampling-2of3-batches", "dpo-1-step"])
def test_stage_killed_then_rerun_equals_uninterrupted(tmp_path, students, records, uninterrupted, monkeypatch,
                                                      phase, point):
    """SIGKILLed with `point` questions in the chains log (sampling) or `point` DPO steps done, the
    re-run samples only the questions not in the log and writes what an uninterrupted run writes."""
    import svrd.prefer as prefer

    project = make_project(tmp_path / "project", students["llava"], records, KILL_PARAMS)
    cache, marks, log = tmp_path / "cache", tmp_path / "marks", tmp_path / "killed.log"
    marks.mkdir()
    env = {**os.environ, "SVRD_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "SLOW_S": "0.5", "MARKS": str(marks)}
    driver = KILL_DRIVER.format(tests=str(Path(__file__).resolve().parent), stage=str(REPO / "stages" / "prefer.py"))

    def reached() -> bool:
        if phase == "dpo":
            return (marks / f"dpo-step-{point}").exists()
        logs = list(cache.glob("prefer/*/chains.jsonl"))
        return bool(logs) and len(logs[0].read_bytes().splitlines()) >= point

    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", driver], cwd=project, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 120
        while not reached():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the run never reached {phase} {point}"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    [chains_log] = cache.glob("prefer/*/chains.jsonl")
    before = {json.loads(line)["pid"]: line for line in chains_log.read_text().splitlines()}
    assert not (project / "data/prefer/model").exists()
    if phase == "sampling":  # killed between two batches: pairs not yet written
        assert len(before) == point and not (project / "data/prefer/pairs.parquet").exists()
    else:  # killed mid-DPO: every chain sampled, the pairs written, the model not
        assert len(before) == KILL_QUESTIONS and (project / "data/prefer/pairs.parquet").exists()

    # The re-run (in-process, same cache) samples only the questions not yet in the log.
    sampled: list[str] = []
    original = prefer.sample_batch

    def counting(model, processor, examples, *args, **kwargs):
        sampled.extend(ex.pid for ex in examples)
        return original(model, processor, examples, *args, **kwargs)

    monkeypatch.setattr(prefer, "sample_batch", counting)
    monkeypatch.setattr(prefer, "judge", first_chain_right)
    stats = run_prefer(load_params(project / "params.yaml"), records, project / "data/distill/model",
                       project / "data/prefer/model", project / "data/prefer/pairs.parquet", cache / "prefer",
                       progress=False)
    wanted = [r["pid"] for r in records[:KILL_QUESTIONS]]
    assert sorted(sampled) == sorted(set(wanted) - set(before)), "finished questions must not be re-sampled"
    assert stats["resumed"] == len(before)

    # Nothing lost, nothing twice, and the same bytes as the uninterrupted run.
    assert sorted(log_pids(chains_log)) == sorted(wanted)
    assert all(line in chains_log.read_text().splitlines() for line in before.values())
    assert chains_log.read_bytes() == uninterrupted["chains"]
    assert pq.read_table(project / "data/prefer/pairs.parquet").column("pid").to_pylist() == \
        pq.read_table(uninterrupted["project"] / "data/prefer/pairs.parquet").column("pid").to_pylist()
    assert sha256(project / "data/prefer/pairs.parquet") == uninterrupted["pairs"]
    assert file_hashes(project / "data/prefer/model") == uninterrupted["model"]
    ref = uninterrupted["stats"]
    assert {k: stats[k] for k in SAME_STATS} == {k: ref[k] for k in SAME_STATS}
    assert {k: stats["dpo"].get(k) for k in SAME_DPO} == {k: ref["dpo"].get(k) for k in SAME_DPO}


def test_log_cut_inside_a_batch_resamples_that_batch_whole(tmp_path, students, records):
    """A kill between two lines of one batch (several writes when a batch outgrows the write buffer;
    a SIGKILL cannot be aimed there) leaves part of a batch: the resumed run samples that batch again
    whole, so every question gets the chains an uninterrupted run gives it, each logged once."""
    model, processor = load_model(str(students["llava"])), load_processor(str(students["llava"]))
    examples = examples_from_rows(records[:KILL_QUESTIONS])
    kw = dict(k=2, temperature=1.0, top_p=1.0, max_new_tokens=8, batch_size=2, seed=0, progress=False)
    full_log = tmp_path / "full.jsonl"
    with chain_appender(full_log) as persist:
        full = sample_chains(model, processor, examples, on_batch=persist, **kw)
    lines = full_log.read_bytes().splitlines(keepends=True)
    assert [len(json.loads(line)["batch"]) for line in lines] == [2, 2, 2, 2, 1]
    for tail in (b"", lines[3][:25]):  # batch 2's second line not written / cut mid-way
        cut_log = tmp_path / f"cut-{len(tail)}.jsonl"
        cut_log.write_bytes(b"".join(lines[:3]) + tail)
        done = load_chains(cut_log)
        assert list(done) == log_pids(full_log)[:2] and cut_log.read_bytes() == b"".join(lines[:2])
        with chain_appender(cut_log) as persist:
            resumed = sample_chains(model, processor, examples, done=done, on_batch=persist, **kw)
        assert resumed == full
        assert cut_log.read_bytes() == full_log.read_bytes()


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


# ------------------------------------------------------------------------------ one prompt encoding

def add_bos(student: Path) -> None:
    """Make the saved student's tokenizer add a BOS to every text, as Llama tokenizers do (a
    TemplateProcessing post-processor, saved in tokenizer.json)."""
    from tokenizers.processors import TemplateProcessing

    from svrd.examples import tokenizer_of

    processor = load_processor(str(student))
    tok = tokenizer_of(processor)
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.bos_token_id)])
    processor.save_pretrained(student)


def test_dpo_trains_on_the_prompt_distill_and_infer_encode(tmp_path, records):
    """With a BOS-adding tokenizer, the prompt ids DPO trains on (TRL's vision collator, as the DPO
    trainer's own dataloader gives them) are the ids distill trains on and infer generates from, BOS
    included; and the chosen sequence is token for token what distill would train on for that target."""
    from svrd.examples import encode_prompt, encode_training, tokenizer_of
    from svrd.infer.encoding import encode_batch
    from svrd.prefer import dpo_trainer

    student = tmp_path / "bos-student"
    build_llava(student, corpus(records))
    add_bos(student)
    model, processor = load_model(str(student)), load_processor(str(student))
    tok = tokenizer_of(processor)
    example = examples_from_rows(records[:1])[0]
    distill_ids = encode_prompt(processor, example)["input_ids"][0].tolist()
    infer_ids = encode_batch(processor, [example])["input_ids"][0].tolist()
    assert distill_ids[0] == tok.bos_token_id and distill_ids.count(tok.bos_token_id) == 1  # the tokenizer adds it
    assert infer_ids == distill_ids

    chosen = f"<CONCLUSION> {records[0]['choices'][records[0]['answer']]} </CONCLUSION>"
    pair = {"pid": example.pid, "chosen": chosen, "rejected": "<CONCLUSION> none </CONCLUSION>"}
    dataset = dpo_dataset(processor, {example.pid: example}, [pair])
    trainer = dpo_trainer(model, frozen_copy(model), processor, dataset,
                          prefer_cfg(**{"prefer.train_batch_size": 1}).prefer, tmp_path / "dpo")
    batch = next(iter(trainer.get_train_dataloader()))
    real = batch["attention_mask"][0].bool()
    prompt = batch["completion_mask"][0] == 0
    assert batch["input_ids"][0][real & prompt].tolist() == distill_ids
    trained_as = encode_training(processor, replace(example, target=chosen), max_length=4096)["input_ids"].tolist()
    assert batch["input_ids"][0][real].tolist() == trained_as
