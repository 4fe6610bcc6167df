"""infer.mode self_consistency: the majority-vote rules, and runs on a tiny LLaVA built here."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny_models import varied_sample_student

import svrd.infer.generate as generate
import svrd.infer.generation as generation
import svrd.infer.predict as infer
import svrd.infer.self_consistency as self_consistency
from svrd.answers import extract_choice
from svrd.examples import Example
from svrd.infer.encoding import examples_from_rows
from svrd.infer.predict import predict
from svrd.infer.resume import load_partial
from svrd.infer.run import run_inference
from svrd.infer.schema import PREDICTION_SCHEMA
from svrd.infer.self_consistency import majority_vote, self_consistency_stats

torch.set_num_threads(1)


# ------------------------------------------------------------------ the voting rules

def test_clear_majority_wins_and_unparseable_chains_do_not_vote():
    assert majority_vote([1, 1, None, 0, None], 3) == (1, [1, 2, 0], False)
    # Two unparseable chains outnumber the winner's votes: they still cast none.
    assert majority_vote([None, None, None, 2], 3, greedy=0) == (2, [0, 0, 1], False)


def test_a_single_vote_decides():
    assert majority_vote([0], 2) == (0, [1, 0], False)
    assert majority_vote([None, None, 1, None, None], 2, greedy=0) == (1, [0, 1], False)


def test_no_parseable_chain_gives_null_without_a_tie():
    assert majority_vote([None] * 5, 4, greedy=1) == (None, [0, 0, 0, 0], False)
    assert majority_vote([], 2) == (None, [0, 0], False)
    # An index outside the options (never produced by extract_choice) is no vote either.
    assert majority_vote([5, -1], 2) == (None, [0, 0], False)


def test_a_tie_goes_to_the_greedy_answer_when_it_is_among_the_tied():
    assert majority_vote([0, 1, 1, 0, None], 3, greedy=1) == (1, [2, 2, 0], True)
    assert majority_vote([0, 1, 1, 0, None], 3, greedy=0) == (0, [2, 2, 0], True)
    assert majority_vote([0, 1, 2], 3, greedy=2) == (2, [1, 1, 1], True)


def test_a_tie_without_the_greedy_answer_among_the_tied_is_null():
    assert majority_vote([0, 1, 1, 0, 2], 3, greedy=2) == (None, [2, 2, 1], True)
    assert majority_vote([0, 1], 2, greedy=None) == (None, [1, 1], True)


def test_stats_count_ties_no_votes_and_agreement():
    rows = [
        {"votes": "[3, 1, 0]", "choice": 0, "tied": False},
        {"votes": "[2, 2, 0]", "choice": 1, "tied": True},
        {"votes": "[2, 2, 0]", "choice": None, "tied": True},
        {"votes": "[0, 0, 0]", "choice": None, "tied": False},
    ]
    stats = self_consistency_stats(rows, 4)
    assert stats == {"samples": 4, "ties": 2, "ties_unresolved": 1, "no_vote": 1,
                     "mean_agreement": round((3 / 4 + 2 / 4 + 2 / 4 + 0) / 4, 4)}


# ------------------------------------------------------------------ the wiring, with chosen chains

CHOICES = ["attract", "repel", "neither"]


def _answer_with_chains(monkeypatch, greedy: str, sampled: list[str]) -> dict:
    """answer_batch in self_consistency mode with the greedy output and the sampled chains given."""
    monkeypatch.setattr(generate, "encode_batch", lambda processor, examples: {"input_ids": torch.zeros((1, 1))})
    monkeypatch.setattr(generate, "to_device", lambda model, inputs: inputs)
    monkeypatch.setattr(generate, "generate_ids", lambda *a, **k: [[1, 2]])
    monkeypatch.setattr(generation, "tokenizer_of", lambda processor: type("T", (), {"decode": lambda self, i, **k: greedy})())

    def fake_sample(model, processor, examples, k, temperature, top_p, max_new_tokens, seed=0, min_new_tokens=0):
        assert k == len(sampled)
        return [[{"text": t, "new_tokens": 3, "finished": True} for t in sampled]]

    monkeypatch.setattr(self_consistency, "sample_batch", fake_sample)
    [row] = infer.answer_batch(None, None, [Example("p", None, "q")], [CHOICES], 8, mode="self_consistency",
                               samples=len(sampled))
    return row


def _c(letter: str) -> str:
    return f"<CONCLUSION> {letter} </CONCLUSION>"


def test_row_keeps_the_first_winning_chain_and_the_votes(monkeypatch):
    row = _answer_with_chains(monkeypatch, _c("A"), ["gibberish", _c("B"), _c("A"), _c("B"), "no idea"])
    assert row["choice"] == 1 and row["raw"] == _c("B") and row["choice_text"] == 1
    assert json.loads(row["votes"]) == [1, 2, 0] and row["tied"] is False
    assert row["new_tokens"] == 2 + 5 * 3  # the greedy output and every sample


def test_row_tie_broken_by_the_greedy_answer(monkeypatch):
    row = _answer_with_chains(monkeypatch, _c("B"), [_c("A"), _c("B")])
    assert row["choice"] == 1 and row["raw"] == _c("B") and row["tied"] is True


def test_row_unresolved_tie_and_no_vote_are_null(monkeypatch):
    row = _answer_with_chains(monkeypatch, _c("C"), [_c("A"), _c("B")])
    assert row["choice"] is None and row["raw"] == _c("A") and row["choice_text"] == 0 and row["tied"] is True
    row = _answer_with_chains(monkeypatch, _c("C"), ["x", "y", "z"])
    assert row["choice"] is None and row["raw"] == "x" and row["choice_text"] is None
    assert json.loads(row["votes"]) == [0, 0, 0] and row["tied"] is False


# ------------------------------------------------------------------ a tiny student

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """12 sample questions and a tiny LLaVA with re-drawn (larger) weights, as in tests/test_infer.py."""
    return varied_sample_student(tmp_path_factory.mktemp("self_consistency"), per_family=3, max_rows=12)


def _sc(tiny, rows, seed=0, samples=4, batch_size=4):
    return predict(tiny["model"], tiny["processor"], examples_from_rows(rows), {r["pid"]: r["choices"] for r in rows},
                   "tiny", batch_size=batch_size, max_new_tokens=6, mode="self_consistency", samples=samples,
                   temperature=0.7, seed=seed, progress=False)


def test_tiny_student_one_row_per_pid_with_votes(tiny):
    rows = tiny["rows"][:8]
    preds = _sc(tiny, rows)
    assert [p["pid"] for p in preds] == [r["pid"] for r in rows]
    for pred, rec in zip(preds, rows, strict=True):
        votes = json.loads(pred["votes"])
        assert pred["mode"] == "self_consistency" and pred["option_logprobs"] is None
        assert len(votes) == len(rec["choices"]) and sum(votes) <= 4 and all(v >= 0 for v in votes)
        assert pred["choice_text"] == extract_choice(pred["raw"], rec["choices"])
        if pred["choice"] is not None:
            assert votes[pred["choice"]] == max(votes) and pred["choice_text"] == pred["choice"]
        else:
            assert max(votes) == 0 or votes.count(max(votes)) > 1
        assert pred["new_tokens"] > 0
    pa.Table.from_pylist([{k: v for k, v in p.items() if k != "tied"} for p in preds], schema=PREDICTION_SCHEMA)


def test_tiny_student_fixed_seed_is_deterministic(tiny):
    rows = tiny["rows"][:8]
    keys = ("pid", "raw", "choice", "choice_text", "votes", "new_tokens")
    first = [[p[k] for k in keys] for p in _sc(tiny, rows, seed=3)]
    again = [[p[k] for k in keys] for p in _sc(tiny, rows, seed=3)]
    assert first == again
    other = [[p[k] for k in keys] for p in _sc(tiny, rows, seed=4)]
    assert other != first  # the seed reaches the sampler


def test_run_inference_resumes_self_consistency(tiny, tmp_path, monkeypatch):
    """A run that dies after its first batch resumes from the persisted rows and ends where an
    uninterrupted run ends (same batches, same per-batch seeds); the stats count resumed rows too."""
    from svrd.io import read_rows
    from svrd.params import load_params

    rows = tiny["rows"][:6]
    table = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), table)
    test_rows = read_rows(table)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml").with_overrides({
        "student.model": str(tiny["path"]), "infer.batch_size": 3, "infer.max_new_tokens": 6,
        "infer.mode": "self_consistency", "infer.samples": 3, "infer.temperature": 0.7, "infer.seed": 1})
    monkeypatch.setenv("SVRD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")

    real, calls = infer.answer_batch, []

    def dies_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(infer, "answer_batch", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run_inference(params, "base", test_rows)
    monkeypatch.setattr(infer, "answer_batch", real)
    [partial] = (tmp_path / "cache" / "infer").glob("base-*.jsonl")
    assert len(load_partial(partial)) == 3

    resumed, stats = run_inference(params, "base", test_rows)
    assert stats["resumed"] == 3 and stats["questions"] == 6 and not partial.exists()
    assert {"ties", "ties_unresolved", "no_vote", "mean_agreement"} <= set(stats) and stats["samples"] == 3
    assert all("tied" not in r for r in resumed)
    pa.Table.from_pylist(resumed, schema=PREDICTION_SCHEMA)

    clean, _ = run_inference(params, "base", test_rows)
    keys = ("pid", "raw", "choice", "choice_text", "votes", "new_tokens")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in clean]


def test_tiny_student_biased_to_letters_votes(tiny):
    """A logit bias on the letters A and B makes each one-token chain a bare choice, so the real
    sampler's chains do vote: votes sum to the samples, and the answer follows the voting rule."""
    from svrd.examples import tokenizer_of

    tok = tokenizer_of(tiny["processor"])
    letters = [tok(x, add_special_tokens=False)["input_ids"][0] for x in ("A", "B")]

    def bias(module, args, output):
        output = output.clone()
        output[..., letters] += 100.0  # equal bias: the sampler picks between A and B
        return output

    handle = tiny["model"].get_output_embeddings().register_forward_hook(bias)
    try:
        rows = tiny["rows"][:8]
        preds = predict(tiny["model"], tiny["processor"], examples_from_rows(rows),
                        {r["pid"]: r["choices"] for r in rows}, "tiny", batch_size=8, max_new_tokens=1,
                        mode="self_consistency", samples=4, temperature=0.7, seed=0, progress=False)
        greedy = predict(tiny["model"], tiny["processor"], examples_from_rows(rows),
                         {r["pid"]: r["choices"] for r in rows}, "tiny", batch_size=8, max_new_tokens=1,
                         progress=False)
    finally:
        handle.remove()
    for pred, g in zip(preds, greedy, strict=True):
        votes = json.loads(pred["votes"])
        assert sum(votes) == 4 and sum(votes[:2]) == 4
        # the voting rule written out here, not taken from majority_vote: the most votes win; a tie
        # goes to the greedy answer when it is among the leaders, else no answer
        leaders = [k for k, v in enumerate(votes) if v == max(votes)]
        expected = leaders[0] if len(leaders) == 1 else (g["choice"] if g["choice"] in leaders else None)
        assert pred["choice"] == expected
    assert any(p["choice"] is not None for p in preds)
    assert len({p["votes"] for p in preds}) > 1  # the chains really are sampled
