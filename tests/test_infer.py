"""svrd.infer (the package) on a tiny LLaVA built here: batched = unbatched, likelihood answering, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_models import varied_sample_student

from svrd.examples import tokenizer_of
from svrd.infer.encoding import examples_from_rows
from svrd.infer.likelihood import CONCLUSION_TAG, continuation_ids, option_continuation, rationale_prefix
from svrd.infer.predict import predict
from svrd.infer.resume import load_partial
from svrd.infer.run import run_inference
from svrd.infer.schema import PREDICTION_SCHEMA

REPO = Path(__file__).resolve().parents[1]
COMPARED = ("pid", "model", "mode", "raw", "choice", "choice_text", "new_tokens")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """20 sample questions and a tiny LLaVA whose weights are re-drawn larger than the default
    init, so greedy outputs differ between questions (an untrained init repeats one token)."""
    return varied_sample_student(tmp_path_factory.mktemp("infer"), per_family=4)


def _predict(tiny, rows, batch_size, **kw):
    return predict(tiny["model"], tiny["processor"], examples_from_rows(rows), {r["pid"]: r["choices"] for r in rows},
                   "tiny", batch_size=batch_size, progress=False, **kw)


def _same(a: list[dict], b: list[dict]) -> None:
    assert [[r[k] for k in COMPARED] for r in a] == [[r[k] for k in COMPARED] for r in b]
    for x, y in zip(a, b, strict=True):
        if x["option_logprobs"] is None:
            assert y["option_logprobs"] is None
        else:
            assert x["option_logprobs"] == pytest.approx(y["option_logprobs"], abs=1e-3)


def test_batch_8_equals_batch_1_greedy_fp32(tiny):
    rows = tiny["rows"][:8]
    batched = _predict(tiny, rows, 8, max_new_tokens=8)
    single = _predict(tiny, rows, 1, max_new_tokens=8)
    # The prompts differ in length (left padding is exercised) and the outputs differ between questions.
    assert len({len(r["question"]) for r in rows}) > 1
    assert len({r["raw"] for r in single}) > 1 and all(r["new_tokens"] > 0 for r in single)
    _same(batched, single)
    assert [r["pid"] for r in batched] == [r["pid"] for r in rows]
    pa.Table.from_pylist(batched, schema=PREDICTION_SCHEMA)  # rows fit the table's schema


def test_pruned_decoding_equals_batch_1_greedy_on_a_mixed_length_batch(tiny):
    """Rows leave the batch as they end (svrd.infer.generation.decode_pruned): every row still gets
    exactly what it gets alone through `generate`. Tokens the greedy outputs write are made extra stops,
    chosen so that rows end at several different steps (a random model rarely writes EOS); the rows
    that go on write different tokens, so keeping a wrong row's cache would show."""
    from svrd.infer.encoding import encode_batch, to_device
    from svrd.infer.generation import decode_pruned, eos_ids, generate_ids, prunable, stop_ids

    model, processor = tiny["model"], tiny["processor"]
    examples = examples_from_rows(tiny["rows"][:16])  # 16: enough different outputs to end at 3+ steps
    tok = tokenizer_of(processor)
    eos = eos_ids(model, tok)
    inputs = to_device(model, encode_batch(processor, examples))
    assert prunable(model, inputs) and len(set(inputs["attention_mask"].sum(-1).tolist())) > 1  # left padding
    alone = [generate_ids(model, processor, to_device(model, encode_batch(processor, [ex])), 12, prune=False)[0]
             for ex in examples]

    def ends(stops: set[int]) -> list[int]:  # where each row's output stops with `stops` as extra stop tokens
        return [next((k for k, t in enumerate(a) if t in stops), len(a)) for a in alone]

    stops: set[int] = set()
    tokens = sorted({t for a in alone for t in a})
    while True:  # add the stop token that most raises the number of different end steps, while one does
        best = max(tokens, key=lambda t: len(set(ends(stops | {t}))))
        if len(set(ends(stops | {best}))) <= len(set(ends(stops))):
            break
        stops.add(best)
    assert len(set(ends(stops))) >= 3  # rows end at several different steps
    expected = [a[:k] for a, k in zip(alone, ends(stops), strict=True)]
    assert decode_pruned(model, inputs, 12, 0, eos, stop_ids(tok, eos) | stops) == expected
    # What predict runs (pruning on) against static batched generate and batch 1; fixed length too.
    assert generate_ids(model, processor, inputs, 12) == generate_ids(model, processor, inputs, 12, prune=False) == alone
    fixed = generate_ids(model, processor, inputs, 6, min_new_tokens=6)
    assert fixed == generate_ids(model, processor, inputs, 6, min_new_tokens=6, prune=False)


def test_likelihood_batch_8_equals_batch_1_and_is_never_unparseable(tiny):
    rows = tiny["rows"][8:14]
    batched = _predict(tiny, rows, 8, max_new_tokens=4, mode="likelihood")
    single = _predict(tiny, rows, 1, max_new_tokens=4, mode="likelihood")
    _same(batched, single)
    for row, rec in zip(batched, rows, strict=True):
        assert row["mode"] == "likelihood"
        assert len(row["option_logprobs"]) == len(rec["choices"])
        scores = row["option_logprobs"]
        assert row["choice"] == max(range(len(scores)), key=lambda k: scores[k])
        assert all(s < 0 for s in scores)
    table = pa.Table.from_pylist(batched, schema=PREDICTION_SCHEMA)
    assert table.column("choice").null_count == 0


def test_generate_mode_choice_is_the_text_choice(tiny, monkeypatch):
    """The choice of a generated output is the option its text names (read by hand here: the
    generator is replaced by known outputs), and `choice_text` holds the same in generate mode."""
    import svrd.infer.generate as generate
    import svrd.infer.predict as infer

    rows = tiny["rows"][:4]
    tok = tokenizer_of(tiny["processor"])
    last = rows[3]["choices"][-1]
    outputs = ["<CONCLUSION> B </CONCLUSION>", "(A)", "I cannot tell.", f"<CONCLUSION> {last} </CONCLUSION>"]
    monkeypatch.setattr(generate, "generate_ids", lambda *a, **k: [tok(t, add_special_tokens=False)["input_ids"]
                                                                for t in outputs])
    got = infer.answer_batch(tiny["model"], tiny["processor"], examples_from_rows(rows), [r["choices"] for r in rows], 4)
    assert [r["raw"] for r in got] == outputs
    assert [r["choice"] for r in got] == [1, 0, None, len(rows[3]["choices"]) - 1]
    assert [r["choice_text"] for r in got] == [1, 0, None, len(rows[3]["choices"]) - 1]
    assert all(r["option_logprobs"] is None for r in got)
    assert {r["mode"] for r in _predict(tiny, rows, 4, max_new_tokens=4)} == {"generate"}


def test_rationale_prefix_cuts_after_the_conclusion_tag_or_appends_it(tiny):
    tok = tokenizer_of(tiny["processor"])
    ids = tok("<SUMMARY> s </SUMMARY>\n<REASONING> so B </REASONING>\n<CONCLUSION> B </CONCLUSION>",
              add_special_tokens=False)["input_ids"]
    prefix = rationale_prefix(tok, ids)
    assert tok.decode(prefix).endswith(CONCLUSION_TAG) and "</REASONING>" in tok.decode(prefix)
    # Never written (answer-only text, or cut off): the tag is appended after everything written.
    cut = tok("<SUMMARY> s </SUMMARY>\n<REASONING> so", add_special_tokens=False)["input_ids"]
    assert rationale_prefix(tok, cut) == cut + tok(CONCLUSION_TAG, add_special_tokens=False)["input_ids"]
    assert rationale_prefix(tok, []) == tok(CONCLUSION_TAG, add_special_tokens=False)["input_ids"]
    # A tag spelled with spaces, as LLaVA-CoT writes it, counts too.
    # It is cut there, nothing appended (a check on the trailing ">" alone would also hold for the
    # fallback, which appends its own tag).
    spaced = tok("thinking < CONCLUSION > A", add_special_tokens=False)["input_ids"]
    prefix = rationale_prefix(tok, spaced)
    assert prefix == spaced[:len(prefix)] and len(prefix) < len(spaced)
    assert tok.decode(prefix).strip() == "thinking < CONCLUSION >"


def test_option_continuations(tiny):
    choices = ["attract", "repel"]
    assert option_continuation(1, choices, "letter") == " B"
    assert option_continuation(0, choices, "letter_text") == " A. attract </CONCLUSION>"
    assert option_continuation(1, choices, "text") == " repel </CONCLUSION>"
    with pytest.raises(ValueError):
        option_continuation(0, choices, "bogus")
    tok = tokenizer_of(tiny["processor"])
    # The letter follows the tag as in the training target "<CONCLUSION> B </CONCLUSION>".
    target = tok("<CONCLUSION> B </CONCLUSION>", add_special_tokens=False)["input_ids"]
    tag = tok(CONCLUSION_TAG, add_special_tokens=False)["input_ids"]
    assert target[len(tag):len(tag) + len(continuation_ids(tok, " B"))] == continuation_ids(tok, " B")


def test_load_partial_drops_and_cuts_a_line_cut_by_a_kill(tmp_path):
    log = tmp_path / "p.jsonl"
    log.write_text(json.dumps({"pid": "1"}) + "\n" + json.dumps({"pid": "2"}) + "\n" + '{"pid": "3", "ra')
    assert set(load_partial(log)) == {"1", "2"}
    assert log.read_text().endswith("}\n")  # appends start on a fresh line
    assert load_partial(tmp_path / "missing.jsonl") == {}


CHILD = textwrap.dedent("""
    import json, os, sys, time
    import svrd.infer.predict as infer
    import svrd.infer.run as run
    from svrd.io import read_rows
    from svrd.params import load_params

    real = infer.answer_batch
    def slow(*args, **kwargs):  # the kill must land mid-run: each batch takes a little longer
        out = real(*args, **kwargs)
        time.sleep(float(os.environ["SLOW_S"]))
        return out
    infer.answer_batch = slow
    params = load_params().with_overrides(json.loads(sys.argv[1]))
    rows, stats = run.run_inference(params, "base", read_rows(sys.argv[2]))
    print("FINISHED", stats["questions"])
""")


@pytest.mark.parametrize("kill_after", [2, 4, 6])  # rows persisted when the kill lands: several points
def test_infer_resumes_after_sigkill(tiny, tmp_path, monkeypatch, kill_after):
    import svrd.infer.predict as infer
    from svrd.io import read_rows
    from svrd.params import load_params

    rows = tiny["rows"][:8]
    table = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), table)
    overrides = {"student.model": str(tiny["path"]), "infer.batch_size": 2, "infer.max_new_tokens": 4,
                 "infer.mode": "likelihood"}
    killed_cache = tmp_path / "cache-killed"
    env = {**os.environ, "SVRD_CACHE_DIR": str(killed_cache), "SLOW_S": "0.3", "TQDM_DISABLE": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(overrides), str(table)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    lines = 0
    while time.monotonic() < deadline and proc.poll() is None:
        logs = list((killed_cache / "infer").glob("base-*.jsonl")) if (killed_cache / "infer").exists() else []
        lines = len(logs[0].read_text().splitlines()) if logs else 0
        if lines >= kill_after:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"inference ended before it could be killed:\n{proc.stdout.read().decode()[-3000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    [partial] = (killed_cache / "infer").glob("base-*.jsonl")
    finished = load_partial(partial)
    assert kill_after <= len(finished) < len(rows)

    params = load_params(REPO / "params.yaml").with_overrides(overrides)
    test_rows = read_rows(table)
    monkeypatch.setenv("SVRD_CACHE_DIR", str(killed_cache))
    answered = []  # finished rows are reused, not redone: only the rest reach answer_batch
    real_answer_batch = infer.answer_batch
    monkeypatch.setattr(infer, "answer_batch", lambda m, p, batch, *a: answered.extend(ex.pid for ex in batch)
                        or real_answer_batch(m, p, batch, *a))
    resumed, stats = run_inference(params, "base", test_rows)
    assert stats["resumed"] == len(finished) > 0
    assert not partial.exists()  # the finished run removes its log
    assert sorted(answered) == sorted(r["pid"] for r in rows if r["pid"] not in finished)

    # An uninterrupted run of the same model (the fixture holds the weights that were saved).
    clean = _predict(tiny, test_rows, 2, max_new_tokens=4, mode="likelihood")
    for row in clean:
        row["model"] = "base"
    assert [r["pid"] for r in resumed] == [r["pid"] for r in rows]
    assert len({r["pid"] for r in resumed}) == len(rows)
    _same(resumed, clean)


def test_load_partial_drops_a_batch_a_kill_left_incomplete(tmp_path):
    log = tmp_path / "p.jsonl"
    lines = [{"pid": "1", "batch": ["1", "2"]}, {"pid": "2", "batch": ["1", "2"]},
             {"pid": "3", "batch": ["3", "4"]}]  # "4" never made it to disk
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert load_partial(log) == {"1": {"pid": "1"}, "2": {"pid": "2"}}  # batch 3-4 is redone whole
    assert [json.loads(line)["pid"] for line in log.read_text().splitlines()] == ["1", "2"]


def test_two_runs_write_byte_identical_predictions(tiny, tmp_path, monkeypatch):
    """No wall-clock value reaches predictions.parquet (a DVC data output): the same inputs twice
    give the same bytes, and the timings are in the metrics instead."""
    from svrd.io import read_rows, write_table
    from svrd.params import load_params

    table = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(tiny["rows"][:6]), table)
    params = load_params(REPO / "params.yaml").with_overrides(
        {"student.model": str(tiny["path"]), "infer.batch_size": 2, "infer.max_new_tokens": 4})
    written = []
    for run in ("first", "second"):
        monkeypatch.setenv("SVRD_CACHE_DIR", str(tmp_path / f"cache-{run}"))
        rows, stats = run_inference(params, "base", read_rows(table))
        write_table(tmp_path / run / "predictions.parquet", rows, PREDICTION_SCHEMA)  # as stages/infer.py does
        written.append((tmp_path / run / "predictions.parquet").read_bytes())
        timing = stats["seconds_per_question"]
        assert timing["total"] > 0 and timing["p50"] <= timing["p90"]
        assert timing["total"] == pytest.approx(stats["generate_s"], abs=0.01)
    assert written[0] == written[1]
    assert "seconds" not in pq.read_schema(tmp_path / "first" / "predictions.parquet").names

