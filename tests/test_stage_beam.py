"""svrd.infer.stage_beam (infer.mode=stage_beam) on tiny LLaVA students: scripted-judge oracles, the
likelihood and self judges against hand-computed forward passes, determinism, run_inference + resume."""

from __future__ import annotations

import copy
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny_models import varied_sample_student

from svrd.examples import Example, tokenizer_of
from svrd.infer import beam_judges as bj
from svrd.infer import stage_beam as sb
from svrd.infer.encoding import encode_batch, examples_from_rows
from svrd.infer.schema import PREDICTION_SCHEMA
from svrd.models import load_model, load_processor
from svrd.params import ParamsError, load_params

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
CLOSERS = ("</SUMMARY>", "</CAPTION>", "</REASONING>", "</CONCLUSION>")


def with_bias(model, tok, boosts: dict[str, float]):
    """A copy of `model` whose output layer adds `boosts` to the logits of the named tokens."""
    model = copy.deepcopy(model)
    head = model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        for token, value in boosts.items():
            biased.bias[tok.convert_tokens_to_ids(token)] = value
    model.set_output_embeddings(biased)
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_torch_thread):
    """Sample questions; `varied`: the saved tiny student (its stages rarely close); `closing`: an
    untrained one (near-uniform next tokens: candidates differ) whose closing tags get a logit
    boost, so every stage closes within a few tokens and the search runs through all four."""
    t = varied_sample_student(tmp_path_factory.mktemp("beam"), per_family=2)
    tok = tokenizer_of(t["processor"])
    built = load_model(str(t["root"] / "built")).eval()
    t["closing"] = with_bias(built, tok, {c: 4.0 for c in CLOSERS})
    t["closing_processor"] = load_processor(str(t["root"] / "built"))
    t["examples"] = examples_from_rows(t["rows"][:3])
    return t


def _search(tiny, judge, seed=0, k=3, max_new_tokens=96):
    return sb.search(tiny["closing"], tiny["closing_processor"], tiny["examples"], max_new_tokens, k, 1.0, seed, judge)


class IndexJudge:
    """Picks a fixed index per stage (written here) and records every choice it is shown."""

    PICKS = {"summary": 2, "caption": 0, "reasoning": 1, "conclusion": 2}

    def __init__(self):
        self.seen: list[bj.Choice] = []

    def pick(self, choices):
        self.seen.extend(choices)
        return [self.PICKS[c.stage] for c in choices]


class ShortestJudge(bj.PairwiseJudge):
    """Pairwise: the shorter text wins; equal lengths are left undecided (the tie rule decides)."""

    def __init__(self):
        self.seen: list[bj.Choice] = []

    def compare(self, pairs):
        self.seen.extend(c for c, _, _ in pairs if c not in self.seen)
        return [None if len(c.texts[i]) == len(c.texts[j]) else int(len(c.texts[j]) < len(c.texts[i]))
                for c, i, j in pairs]


def _check_oracle(tiny, judge, oracle, results):
    """Walk each question's recorded stages: each stage starts from the oracle's picks so far, and
    the output is exactly the oracle's picks, stage by stage."""
    tok = tokenizer_of(tiny["closing_processor"])
    moved = 0
    for ex, res in zip(tiny["examples"], results, strict=True):
        stages = [c for c in judge.seen if c.example.pid == ex.pid]
        assert [c.stage for c in stages] == list(sb.STAGES[:len(stages)])
        assert len(stages) == len(res["picked"]) == 4  # every stage sampled, contested and judged
        kept: list[int] = []
        for c in stages:
            assert len(c.candidates) == 3 and c.prefix == kept
            best = oracle(c)
            moved += best != 0 and c.candidates[best] != c.candidates[0]
            kept = kept + c.candidates[best]
        assert res["picked"] == [c.texts[oracle(c)] for c in stages]
        assert res["text"] == tok.decode(kept, skip_special_tokens=True).strip()
        assert res["generated"] == 12 and res["sampled_tokens"] == sum(len(x) for c in stages for x in c.candidates)
    assert moved >= 3  # the oracle differs from "keep candidate 0" often enough to be seen


def test_scripted_judge_picks_are_kept_at_every_stage(tiny):
    judge = IndexJudge()
    results = _search(tiny, judge)
    _check_oracle(tiny, judge, lambda c: IndexJudge.PICKS[c.stage], results)
    assert all(c.closed[IndexJudge.PICKS[c.stage]] for c in judge.seen if c.stage != "conclusion")


def test_knockout_with_a_scripted_pairwise_judge_keeps_the_preferred_candidate(tiny):
    judge = ShortestJudge()
    results = _search(tiny, judge)

    def oracle(c):  # shortest; equal length: one that closed its tag, then the first
        return max(range(len(c.texts)), key=lambda k: (-len(c.texts[k]), c.closed[k], -k))

    _check_oracle(tiny, judge, oracle, results)
    assert all(c.judged == 2 for c in judge.seen)  # 3 candidates: 0 v 1, then the winner v 2
    assert all(r["judged"] == 8 for r in results)


def test_undecided_comparisons_go_to_a_closed_candidate_then_the_first():
    class Undecided(bj.PairwiseJudge):
        def compare(self, pairs):
            return [None] * len(pairs)

    def choice(closed):
        return bj.Choice(Example("p", None, "q"), "summary", [], "", [[1]] * len(closed), ["x"] * len(closed), closed)

    assert Undecided().pick([choice([False, True, False]), choice([False, False, False, False]),
                             choice([False, False, True, True])]) == [1, 0, 2]


def test_same_seed_same_rows_other_seed_other_candidates(tiny):
    first, second, other = IndexJudge(), IndexJudge(), IndexJudge()
    assert _search(tiny, first, seed=0) == _search(tiny, second, seed=0)
    assert [c.candidates for c in first.seen] == [c.candidates for c in second.seen]
    _search(tiny, other, seed=1)
    assert [c.candidates for c in first.seen[:3]] != [c.candidates for c in other.seen[:3]]


def _hand_mean_logprob(model, processor, ex, prefix, cand):
    """A plain forward pass over prompt + prefix + candidate (one row, no padding) and log_softmax."""
    inputs = encode_batch(processor, [ex])
    ids = torch.cat([inputs["input_ids"][0], torch.tensor(prefix + cand, dtype=torch.long)])[None]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=inputs["pixel_values"]).logits
    logprobs = torch.log_softmax(logits[0].float(), dim=-1)
    start = ids.shape[1] - len(cand)
    return sum(float(logprobs[start + t - 1, tok_id]) for t, tok_id in enumerate(cand)) / len(cand)


def test_likelihood_judge_picks_the_highest_mean_logprob(tiny):
    model, processor = tiny["model"], tiny["processor"]
    tok = tokenizer_of(processor)

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    texts = [["<CAPTION> A red square. </CAPTION>", "<CAPTION> blue </CAPTION>", "<CAPTION> Which color </CAPTION>"],
             ["\n<CAPTION> The square is green and large. </CAPTION>", "<CAPTION> </CAPTION>"]]
    prefixes = [ids("<SUMMARY> Look at the square. </SUMMARY>\n"), ids("<SUMMARY> The question asks for the color. </SUMMARY>")]
    choices = [bj.Choice(ex, "caption", p, tok.decode(p), [ids(t) for t in ts], ts, [True] * len(ts))
               for ex, p, ts in zip(tiny["examples"][:2], prefixes, texts, strict=True)]  # two rows: left padding
    picks = bj.LikelihoodJudge(model, processor).pick(choices)
    for c, best in zip(choices, picks, strict=True):
        hand = [_hand_mean_logprob(model, processor, c.example, c.prefix, x) for x in c.candidates]
        assert c.scores == pytest.approx(hand, abs=1e-4)
        assert best == max(range(len(hand)), key=lambda k: hand[k])
        assert c.judged == len(c.candidates) and c.judge_tokens == sum(len(x) for x in c.candidates)


def _four(tiny, tok):
    texts = ["<SUMMARY> a </SUMMARY>", "<SUMMARY> the color </SUMMARY>", "<SUMMARY> look </SUMMARY>",
             "<SUMMARY> square </SUMMARY>"]
    return [bj.Choice(ex, "summary", [], "", [tok(t, add_special_tokens=False)["input_ids"] for t in texts], texts,
                      [True] * 4) for ex in tiny["examples"][:2]]


@pytest.mark.parametrize(("forced", "winner"), [("1", 0), ("2", 3)])
def test_self_judge_reads_the_answer_from_the_logits_of_1_and_2(tiny, forced, winner):
    """A student forced to answer "1" (or "2") to every judge prompt: the knockout 0 v 1, 2 v 3,
    winners keeps the first (or the last) candidate, in 3 comparisons."""
    tok = tokenizer_of(tiny["processor"])
    model = with_bias(tiny["model"], tok, {forced: 60.0})
    choices = _four(tiny, tok)
    assert bj.SelfJudge(model, tiny["processor"], chunk=3).pick(choices) == [winner, winner]
    assert all(c.judged == 3 and c.judge_tokens > 3 * 64 for c in choices)  # the prompts hold the image's tokens


def test_self_judge_verdict_matches_a_forward_pass_by_hand(tiny):
    model, processor = tiny["model"], tiny["processor"]
    tok = tokenizer_of(processor)
    judge = bj.SelfJudge(model, processor, chunk=4)
    pairs = [(c, i, j) for c in _four(tiny, tok) for i, j in ((0, 1), (2, 3), (1, 2))]
    got = judge.compare(pairs)
    for (c, i, j), verdict in zip(pairs, got, strict=True):
        inputs = encode_batch(processor, [Example(c.example.pid, c.example.image, bj.judge_prompt(c, i, j))])
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1].float()
        one, two = (max(float(logits[t]) for t in a) for a in judge.answer_ids)
        assert verdict == (0 if one > two else 1)
        assert f"Response 1: {c.texts[i]}" in bj.judge_prompt(c, i, j)
    assert judge.answer_ids[0] == [tok.convert_tokens_to_ids("1")] or len(judge.answer_ids[0]) == 2


def test_openai_judge_through_a_fake_server(tiny):
    from teacher_server import FakeTeacher

    def longer(pid, sample, prompt):
        a, b = re.search(r"Response 1: (.*)\n\nResponse 2: (.*)\n\nWhich", prompt, re.S).groups()
        return "Since it says more, I choose response " + ("2" if len(b) > len(a) else "1") + "."

    tok = tokenizer_of(tiny["processor"])
    params = load_params(REPO / "params.yaml")
    with FakeTeacher(responder=longer) as server:
        beam = params.with_overrides({"infer.beam.judge": "openai", "infer.beam.openai.base_url": server.base_url,
                                      "infer.beam.openai.model": "judge"}).infer.beam
        choices = _four(tiny, tok)
        assert bj.make_judge(beam, None, None).pick(choices) == [1, 1]  # "the color" is the longest
        assert len(server.requests) == 6 and all(r["images"] == 1 for r in server.requests)
    assert [bj.read_verdict(t) for t in ("2", "Since response 1 lists 2 facts, I choose response 2.", "none")] == [1, 1, None]
    with pytest.raises(ParamsError, match="infer.beam.openai.base_url and infer.beam.openai.model"):
        params.with_overrides({"infer.beam.judge": "openai"})


def test_run_inference_stage_beam_counts_and_resumes(tiny, tmp_path, monkeypatch):
    import svrd.infer.predict as infer
    from svrd.infer.run import run_inference
    from svrd.io import read_rows

    table = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(tiny["rows"][:6]), table)
    params = load_params(REPO / "params.yaml").with_overrides(
        {"student.model": str(tiny["path"]), "infer.batch_size": 2, "infer.max_new_tokens": 6, "infer.mode": "stage_beam",
         "infer.beam.candidates": 2, "infer.beam.temperature": 1.5})
    monkeypatch.setenv("SVRD_CACHE_DIR", str(tmp_path / "clean"))
    clean, stats = run_inference(params, "base", read_rows(table))
    for row in clean:
        assert row["mode"] == "stage_beam" and row["beam_generated"] >= 2 and row["beam_judged"] >= 0
        assert "greedy_tokens" not in row and "judge_tokens" not in row
    assert stats["beam_generated"] == sum(r["beam_generated"] for r in clean)
    assert stats["beam_judged"] == sum(r["beam_judged"] for r in clean) > 0
    assert stats["cost_vs_greedy"] > stats["sampled_vs_greedy"] > 0 and stats["judge"] == "likelihood"
    table_out = pa.Table.from_pylist(clean, schema=PREDICTION_SCHEMA)
    assert table_out.column("beam_generated").null_count == 0

    # A run that dies in its second batch leaves the first in the partial log; the rerun reuses it.
    monkeypatch.setenv("SVRD_CACHE_DIR", str(tmp_path / "killed"))
    real, calls, answered = infer.answer_batch, [], []

    def dies_second(m, p, batch, *a):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(m, p, batch, *a)

    monkeypatch.setattr(infer, "answer_batch", dies_second)
    with pytest.raises(RuntimeError, match="killed"):
        run_inference(params, "base", read_rows(table))
    monkeypatch.setattr(infer, "answer_batch", lambda m, p, batch, *a: answered.extend(ex.pid for ex in batch)
                        or real(m, p, batch, *a))
    resumed, again = run_inference(params, "base", read_rows(table))
    assert again["resumed"] == 2 and len(answered) == 4  # only the second and third batches were redone
    keys = ("pid", "raw", "choice", "choice_text", "new_tokens", "beam_generated", "beam_judged")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in clean]
    # The resumed rows brought their cost counts back from the log: the same totals as the clean run.
    for key in ("beam_generated", "beam_judged", "greedy_tokens", "sampled_tokens", "judge_tokens", "cost_vs_greedy"):
        assert again[key] == stats[key], key
