"""Independent oracles for the code that decides the reported numbers.

Each expected value here is computed without the code under test: the official ScienceQA
breakdown straight from problems.json by the benchmark's own definitions, and option
likelihoods by a plain forward pass written in this file.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from fixture_data import scienceqa_sample

from svrd import scoring

SAMPLE = scienceqa_sample()
GPT3 = SAMPLE / "gpt3_test_predictions.json"

# ------------------------------------------------ the official ScienceQA breakdown

# The definitions of ScienceQA's tools/evaluate_acc.py (lupantech/ScienceQA): TXT = the hint is
# non-empty, IMG = the image field is set, NO = neither, grades by name, subjects by name.
OFFICIAL_GROUPS = {
    "NAT": lambda r: r["subject"] == "natural science",
    "SOC": lambda r: r["subject"] == "social science",
    "LAN": lambda r: r["subject"] == "language science",
    "TXT": lambda r: bool(r["hint"]),
    "IMG": lambda r: bool(r["image"]),
    "NO": lambda r: not r["hint"] and not r["image"],
    "G1-6": lambda r: r["grade"] in ["grade1", "grade2", "grade3", "grade4", "grade5", "grade6"],
    "G7-12": lambda r: r["grade"] in ["grade7", "grade8", "grade9", "grade10", "grade11", "grade12"],
}


def _official_test_records() -> dict[str, dict]:
    problems = json.loads((SAMPLE / "problems.json").read_text())
    return {pid: rec for pid, rec in problems.items() if rec["split"] == "test"}


def _official_row(records: list[dict], results: dict[str, int]) -> dict:
    correct = sum(results.get(r["pid"]) == r["answer"] for r in records)
    return {"acc": float(f"{100 * correct / len(records):.2f}") if records else None,
            "correct": correct, "total": len(records)}


def _official_breakdown(results: dict[str, int]) -> dict[str, dict]:
    records = [{**rec, "pid": pid} for pid, rec in _official_test_records().items()]
    out = {"all": _official_row(records, results)}
    for group, member in OFFICIAL_GROUPS.items():
        out[group] = _official_row([r for r in records if member(r)], results)
    for topic in {r["topic"] for r in records}:
        out[f"topic/{topic}"] = _official_row([r for r in records if r["topic"] == topic], results)
    return out


def _predictions_that_each_group_distinguishes() -> dict[str, int]:
    """Right on every grade-6, hinted or language question, wrong elsewhere: moving one such
    question to another group changes that group's accuracy, not only its count."""
    out = {}
    for pid, rec in _official_test_records().items():
        right = rec["grade"] == "grade6" or bool(rec["hint"]) or rec["subject"] == "language science"
        out[pid] = rec["answer"] if right else (rec["answer"] + 1) % len(rec["choices"])
    return out


@pytest.mark.parametrize("predictions", ["gpt3", "group-distinguishing"])
def test_every_official_group_and_topic_matches_the_benchmarks_definition(predictions):
    results = (json.loads(GPT3.read_text())["results"] if predictions == "gpt3"
               else _predictions_that_each_group_distinguishes())
    expected = _official_breakdown(results)
    got = scoring.score(scoring.load_problems(SAMPLE, split="test"), results)
    assert {k for k in got if k.startswith("topic/")} == {k for k in expected if k.startswith("topic/")}
    for group, row in expected.items():
        assert got[group] == row, group
    assert expected["G1-6"]["total"] == 234 and expected["G7-12"]["total"] == 127  # 34 of grade 6 among the first


def test_the_pipelines_parquet_table_scores_the_same_official_groups(tmp_path):
    """The score stage reads the filtered Parquet table (image as PNG bytes), not problems.json:
    every group and topic must come out as the benchmark defines them from there too."""
    import pyarrow as pa

    from svrd.io import write_table
    from svrd.records import PROBLEM_SCHEMA

    rows = []
    for pid, rec in json.loads((SAMPLE / "problems.json").read_text()).items():
        row = {name: rec.get(name) for name in PROBLEM_SCHEMA.names}
        row.update(pid=pid, caption="", image=b"\x89PNG bytes" if rec["image"] else None)
        rows.append(row)
    write_table(tmp_path / "problems.parquet", pa.Table.from_pylist(rows, schema=PROBLEM_SCHEMA))
    results = _predictions_that_each_group_distinguishes()
    got = scoring.score(scoring.load_problems(tmp_path / "problems.parquet", split="test"), results)
    expected = _official_breakdown(results)
    assert {k for k in got if k.startswith("topic/")} == {k for k in expected if k.startswith("topic/")}
    for group, row in expected.items():
        assert got[group] == row, group


# ------------------------------------------------ likelihood answering


@functools.cache
def _student():
    """The smallest tiny LLaVA (64 px images) on colour-square records, its weights redrawn larger so
    that option log-probabilities differ clearly. Cached for the process, so that a mutation run
    (which forks this process per mutant) builds it once."""
    import torch
    from tiny_models import build_llava, corpus, fake_records

    from svrd.models import load_model, load_processor

    records = fake_records(3)
    path = Path(tempfile.mkdtemp(prefix="oracle-student-"))
    atexit.register(shutil.rmtree, path, True)
    build_llava(path, corpus(records))
    model, processor = load_model(str(path)), load_processor(str(path))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3 if "embed" in name else 0.08)
    model.eval()
    return model, processor, records


@pytest.fixture
def student():
    return _student()


def _plain_continuation_logprob(model, prompt: list[int], image_inputs: dict, prefix: list[int],
                                continuation: list[int]) -> float:
    """The oracle: one unpadded forward pass over prompt + prefix + continuation, and the sum of
    log-softmax at each continuation token, read from the position just before it."""
    import torch

    seq = torch.tensor([prompt + prefix + continuation])
    with torch.no_grad():
        logits = model(input_ids=seq, attention_mask=torch.ones_like(seq), use_cache=False, **image_inputs).logits
    logprobs = torch.log_softmax(logits[0].float(), dim=-1)
    start = len(prompt) + len(prefix)
    return sum(float(logprobs[start + t - 1, token]) for t, token in enumerate(continuation))


def _encoded(student):
    from svrd.infer.encoding import encode_batch, examples_from_rows

    model, processor, records = student
    inputs = encode_batch(processor, examples_from_rows(records))
    prompts = [ids[m.bool()].tolist() for ids, m in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
    return inputs, prompts, extra


def test_continuation_scores_equal_a_plain_forward_pass(student):
    """score_continuations (left-padded batch, kept logits, gather) against the oracle, on prompts,
    prefixes and continuations of different lengths, rows with fewer continuations included."""
    from svrd.infer.logprobs import score_continuations

    model, processor, _ = student
    inputs, prompts, extra = _encoded(student)
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    prefixes = [[5, 6, 7], [], [9]]
    continuations = [[[11], [12, 13, 14]], [[15, 16], [17], [18, 19]], [[20]]]
    got = score_continuations(model, processor, inputs, prefixes, continuations)
    for i, conts in enumerate(continuations):
        image_inputs = {k: v[i:i + 1] for k, v in extra.items()}
        expected = [_plain_continuation_logprob(model, prompts[i], image_inputs, prefixes[i], c) for c in conts]
        assert got[i] == pytest.approx(expected, abs=1e-4)
        # the oracle tells a one-position shift apart: each token read one position later differs
        shifted = [_plain_continuation_logprob(model, prompts[i], image_inputs, prefixes[i] + c[:1], c[1:] + c[:1])
                   for c in conts]
        assert any(abs(a - b) > 1e-2 for a, b in zip(expected, shifted, strict=True))


class _NoGenerateRule:
    """The student without `_prepare_position_ids_for_generation` (a family that generate does not
    prepare positions for): position_ids falls back to its own rule from the attention mask."""

    def __init__(self, inner):
        self.inner = inner
        self.device = inner.device

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)

    __call__ = forward


def test_left_padded_scores_equal_unpadded_ones_with_the_fallback_position_rule(student):
    """Each row of the left-padded batch against the oracle's unpadded pass of that row alone."""
    from svrd.infer.logprobs import score_continuations

    model, processor, _ = student
    inputs, prompts, extra = _encoded(student)
    assert len({len(p) for p in prompts}) > 1
    prefixes = [[5, 6], [], [9]]
    continuations = [[[11, 12], [13]], [[15, 16, 17]], [[20], [21, 22]]]
    got = score_continuations(_NoGenerateRule(model), processor, inputs, prefixes, continuations)
    for i, conts in enumerate(continuations):
        image_inputs = {k: v[i:i + 1] for k, v in extra.items()}
        expected = [_plain_continuation_logprob(model, prompts[i], image_inputs, prefixes[i], c) for c in conts]
        assert got[i] == pytest.approx(expected, abs=1e-4)


def test_position_ids_from_the_mask_or_the_familys_own_rule():
    """Hand-written positions for a left-padded mask: 0 on padding, then 0, 1, 2, ... per row."""
    import torch

    from svrd.infer.logprobs import position_ids

    ids = torch.tensor([[0, 0, 7, 8, 9], [5, 6, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])

    class Plain:  # reads position ids; no rule of its own
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            pass

    class NoPositions:  # does not take position ids at all
        def forward(self, input_ids, attention_mask=None, **kwargs):
            pass

    class OwnRule(Plain):  # a family with its own scheme (as multimodal RoPE overrides the method)
        def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
            assert model_kwargs["input_ids"] is inputs_tensor
            return model_kwargs["attention_mask"] * 10 + model_kwargs["rope_offset"]

    class BrokenRule(Plain):
        def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
            raise TypeError("an override that takes other arguments")

    plain = [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert position_ids(Plain(), ids, mask, {}).tolist() == plain
    assert position_ids(BrokenRule(), ids, mask, {}).tolist() == plain
    assert position_ids(NoPositions(), ids, mask, {}) is None
    assert position_ids(OwnRule(), ids, mask, {"rope_offset": 3}).tolist() == [[3, 3, 13, 13, 13], [13] * 5]


@pytest.mark.parametrize("style", ["letter", "letter_text", "text"])
def test_likelihood_answering_picks_the_option_the_oracle_scores_highest(student, style):
    """answer_batch in likelihood mode: the prefix is what was generated plus the <CONCLUSION> tag
    (none is written in 4 tokens), then each option as the conclusion the student was trained to
    write; every option's score and the pick against the oracle."""
    from svrd.examples import tokenizer_of
    from svrd.infer.encoding import examples_from_rows
    from svrd.infer.generation import generate_ids
    from svrd.infer.likelihood import CONCLUSION_TAG
    from svrd.infer.predict import answer_batch

    model, processor, records = student
    inputs, prompts, extra = _encoded(student)
    tok = tokenizer_of(processor)
    tag = tok(CONCLUSION_TAG, add_special_tokens=False)["input_ids"]
    generated = generate_ids(model, processor, inputs, 4)
    rows = answer_batch(model, processor, examples_from_rows(records), [r["choices"] for r in records], 4,
                        mode="likelihood", likelihood_answer=style)
    for i, (row, rec) in enumerate(zip(rows, records, strict=True)):
        assert "CONCLUSION" not in tok.decode(generated[i])
        image_inputs = {k: v[i:i + 1] for k, v in extra.items()}
        written = {"letter": "{letter}", "letter_text": "{letter}. {text} </CONCLUSION>",
                   "text": "{text} </CONCLUSION>"}[style]
        options = [tok(CONCLUSION_TAG + " " + written.format(letter="ABCDE"[k], text=c), add_special_tokens=False)
                   ["input_ids"][len(tag):] for k, c in enumerate(rec["choices"])]
        expected = [_plain_continuation_logprob(model, prompts[i], image_inputs, generated[i] + tag, o)
                    for o in options]
        assert row["option_logprobs"] == pytest.approx(expected, abs=1e-4)
        assert row["choice"] == max(range(len(expected)), key=lambda k: expected[k])
        assert len(set(row["option_logprobs"])) == len(expected)  # no tie: the pick is decided


def test_rationale_prefix_ends_at_the_first_conclusion_tag_spaced_or_not(student):
    from svrd.examples import tokenizer_of
    from svrd.infer.likelihood import CONCLUSION_TAG, rationale_prefix

    tok = tokenizer_of(student[1])
    for written, before in [("red < CONCLUSION > B </CONCLUSION>", "red < CONCLUSION >"),
                            ("red <CONCLUSION> B <CONCLUSION> C", "red <CONCLUSION>"),
                            ("red <conclusion>B", "red <conclusion>")]:
        ids = tok(written, add_special_tokens=False)["input_ids"]
        prefix = rationale_prefix(tok, ids)
        assert prefix == ids[:len(prefix)] and tok.decode(prefix).strip() == before
    ids = tok("red green", add_special_tokens=False)["input_ids"]
    assert rationale_prefix(tok, ids) == ids + tok(CONCLUSION_TAG, add_special_tokens=False)["input_ids"]


# ------------------------------------------------ split sizes


@pytest.mark.parametrize("fractions", [(0.7, 0.1, 0.2), (7, 1, 2)])
def test_stratified_split_sizes_are_the_fractions_of_the_table(fractions):
    """100 questions of one topic in 70/10/20 (fractions are relative: 7/1/2 is the same split)
    come out exactly 70, 10 and 20: the counts follow from the fractions, not from the code."""
    from svrd.split import split_table

    table = pa.table({"pid": [str(i) for i in range(100)], "split": ["train"] * 100, "topic": ["t"] * 100})
    parts = split_table(table, "stratified", fractions, seed=3)
    assert {k: v.num_rows for k, v in parts.items()} == {"train": 70, "val": 10, "test": 20}
    mixed = pa.table({"pid": [str(i) for i in range(60)], "split": ["train"] * 60,
                      "topic": ["a"] * 20 + ["b"] * 40})
    parts = split_table(mixed, "stratified", fractions, seed=3)
    for topic, size in (("a", 20), ("b", 40)):  # each topic is split in the same fractions, to one question
        got = {k: v.column("topic").to_pylist().count(topic) for k, v in parts.items()}
        want = {k: size * f / sum(fractions) for k, f in zip(("train", "val", "test"), fractions, strict=True)}
        assert all(abs(got[k] - want[k]) <= 1 for k in got), (topic, got)


def test_streaming_split_caps_each_split(tmp_path):
    import pyarrow.parquet as pq

    from svrd.split import split_file

    table = pa.table({"pid": [str(i) for i in range(30)], "split": ["train", "val", "test"] * 10, "topic": ["t"] * 30})
    pq.write_table(table, tmp_path / "problems.parquet", row_group_size=7)
    counts = split_file(tmp_path / "problems.parquet", tmp_path / "out", "official", max_train=4, max_val=2, max_test=3)
    assert {k: counts[k] for k in ("train", "val", "test")} == {"train": 4, "val": 2, "test": 3}
    for name, first in (("train", ["0", "3", "6", "9"]), ("val", ["1", "4"]), ("test", ["2", "5", "8"])):
        assert pq.read_table(tmp_path / "out" / f"{name}.parquet").column("pid").to_pylist() == first


class _CharTokenizer:
    """A stand-in tokenizer with what real ones do and the tiny one does not: a BOS token when asked
    for special tokens, a special token (500, "<CONCLUSION>") that decoding may skip, and a tag that
    merges with the text after it (" B" after the tag becomes one token, 900+ord)."""

    tag = "<CONCLUSION>"

    def __call__(self, text, add_special_tokens=True):
        ids = []
        if text.startswith(self.tag + " ") and len(text) == len(self.tag) + 2:
            ids = [777, 900 + ord(text[-1])]  # merged: the tag's tokens change
        else:
            rest = text
            while rest:
                if rest.startswith(self.tag):
                    ids.append(500)
                    rest = rest[len(self.tag):]
                else:
                    ids.append(ord(rest[0]))
                    rest = rest[1:]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}

    def decode(self, ids, skip_special_tokens=False):
        return "".join("" if i in (1, 500) and skip_special_tokens else self.tag if i == 500 else
                       "<s>" if i == 1 else chr(i) for i in ids)


def test_continuation_ids_without_special_tokens_and_when_the_tag_merges():
    from svrd.infer.likelihood import continuation_ids

    tok = _CharTokenizer()
    # the tag alone is [500]; "<CONCLUSION> B" merges into [777, 966]: the continuation is then
    # tokenized on its own, without a BOS token
    assert continuation_ids(tok, " B") == [ord(" "), ord("B")]
    assert continuation_ids(tok, " red </CONCLUSION>") == [ord(c) for c in " red </CONCLUSION>"]


class _PrefixSpaceTokenizer:
    """SentencePiece-like: a BOS (1) when asked for special tokens, the tag as one token (500), and a
    space that starts the text encoded as its own token (2000), unlike a space after other text (32)."""

    def __call__(self, text, add_special_tokens=True):
        ids = [1] if add_special_tokens else []
        rest = text
        while rest:
            if rest.startswith("<CONCLUSION>"):
                ids.append(500)
                rest = rest[len("<CONCLUSION>"):]
            else:
                ids.append(2000 if rest is text and rest[0] == " " else ord(rest[0]))
                rest = rest[1:]
        return {"input_ids": ids}


def test_continuation_ids_are_the_tokens_after_the_tag_in_running_text():
    from svrd.infer.likelihood import continuation_ids

    tok = _PrefixSpaceTokenizer()
    assert continuation_ids(tok, " B") == [32, 66]  # not [2000, 66]: the space follows the tag
    assert continuation_ids(tok, " red") == [32, ord("r"), ord("e"), ord("d")]


def test_rationale_prefix_keeps_the_tag_token_and_appends_it_without_bos():
    from svrd.infer.likelihood import rationale_prefix

    tok = _CharTokenizer()
    assert rationale_prefix(tok, [500, ord("B")]) == [500]  # the special tag token itself opens it
    assert rationale_prefix(tok, [ord("x"), 500, ord("B")]) == [ord("x"), 500]
    assert rationale_prefix(tok, [ord("x")]) == [ord("x"), 500]  # appended without a BOS


def test_option_continuation_collapses_whitespace_and_other_tags_do_not_open_the_conclusion(student):
    from svrd.examples import tokenizer_of
    from svrd.infer.likelihood import CONCLUSION_TAG, option_continuation, rationale_prefix

    assert option_continuation(1, ["attract", "West \n Virginia"], "text") == " West Virginia </CONCLUSION>"
    assert option_continuation(1, ["attract", "West  Virginia"], "letter_text") == " B. West Virginia </CONCLUSION>"
    tok = tokenizer_of(student[1])
    ids = tok("<SUMMARY> red </SUMMARY> </CONCLUSION>", add_special_tokens=False)["input_ids"]
    assert rationale_prefix(tok, ids) == ids + tok(CONCLUSION_TAG, add_special_tokens=False)["input_ids"]


# ------------------------------------------------ the teach cache key, written out


def test_teach_cache_key_is_the_sha256_of_its_documented_canonical_json():
    """The key format written out by hand (a shared cache pulled from another machine must keep
    hitting): sorted keys, no spaces, ASCII; the request digest length-prefixes prompt and image."""
    import hashlib

    from svrd.teach.cache import KEY_VERSION, cache_key, request_digest

    blob = ('{"backend":"openai","generation":{"max_new_tokens":8,"temperature":0.0},"key_version":'
            + json.dumps(KEY_VERSION) + ',"model":"m\\u00e9","request":"r","sample":1}')
    got = cache_key("openai", "mé", {"temperature": 0.0, "max_new_tokens": 8}, "r", 1)
    assert got == hashlib.sha256(blob.encode("ascii")).hexdigest()
    prompt, image = "Question: é", b"\x89PNG"
    framed = b"".join(len(part).to_bytes(8, "big") + part for part in (prompt.encode("utf-8"), image))
    assert request_digest(prompt, image) == hashlib.sha256(framed).hexdigest()
    assert request_digest(prompt, None) == hashlib.sha256(framed[:8 + len(prompt.encode())] + bytes(8)).hexdigest()


# ------------------------------------------------ split: dealing, defaults, twins, the content key


@pytest.mark.parametrize(("n", "fractions", "want"), [
    # 80/10/10, deficits (share x k - count so far) by hand, ties to the first split:
    # k=1 .8/.1/.1 -> train; k=2 .6/.2/.2 -> train; k=3 .4/.3/.3 -> train; k=4 .2/.4/.4 -> val;
    # k=5 1.0/-.5/.5 -> train
    (5, (0.8, 0.1, 0.1), {"train": 4, "val": 1, "test": 0}),
    # 60/20/20: k=1 .6/.2/.2 -> train; k=2 .2/.4/.4 -> val; k=3 .8/-.4/.6 -> train
    (3, (0.6, 0.2, 0.2), {"train": 2, "val": 1, "test": 0}),
])
def test_stratified_deals_each_question_to_the_split_furthest_below_its_share(n, fractions, want):
    from svrd.split import split_table

    table = pa.table({"pid": [str(i) for i in range(n)], "split": ["train"] * n, "topic": ["t"] * n})
    for seed in (0, 5):  # one topic: the seed only reorders the rows, never the sizes
        parts = split_table(table, "stratified", fractions, seed=seed)
        assert {k: v.num_rows for k, v in parts.items()} == want


def test_split_defaults_are_the_official_split_and_seed_zero(tmp_path):
    import pyarrow.parquet as pq

    from svrd.split import split_file, split_table

    n = 40
    table = pa.table({"pid": [str(i) for i in range(n)], "split": ["val", "test", "train", "train"] * 10,
                      "topic": ["a", "b"] * 20})
    official = split_table(table)
    assert [official[k].num_rows for k in ("train", "val", "test")] == [20, 10, 10]
    assert official["val"].column("pid").to_pylist() == [str(i) for i in range(0, n, 4)]

    def pids(parts):
        return {k: v.column("pid").to_pylist() for k, v in parts.items()}

    seed0 = pids(split_table(table, "stratified", seed=0))
    assert pids(split_table(table, "stratified")) == seed0
    assert pids(split_table(table, "stratified", seed=1)) != seed0  # the seed does change the split
    pq.write_table(table, tmp_path / "problems.parquet")
    split_file(tmp_path / "problems.parquet", tmp_path / "default", "stratified")
    got = {k: pq.read_table(tmp_path / "default" / f"{k}.parquet").column("pid").to_pylist() for k in seed0}
    assert got == seed0


def test_a_split_capped_to_nothing_keeps_its_string_split_column():
    from svrd.split import split_table

    table = pa.table({"pid": ["1", "2"], "split": ["train", "train"], "topic": ["t", "t"]})
    parts = split_table(table, max_train=0)
    for part in parts.values():
        assert part.num_rows == 0 and part.schema.field("split").type == pa.string()


def test_split_files_are_written_zstd_compressed(tmp_path):
    import pyarrow.parquet as pq

    from svrd.split import split_file

    table = pa.table({"pid": ["1", "2", "3"], "split": ["train", "val", "test"], "topic": ["t"] * 3})
    pq.write_table(table, tmp_path / "problems.parquet", compression="snappy")
    split_file(tmp_path / "problems.parquet", tmp_path / "out")
    for name in ("train", "val", "test"):
        meta = pq.ParquetFile(tmp_path / "out" / f"{name}.parquet").metadata
        assert meta.row_group(0).column(0).compression == "ZSTD"


def test_twin_examples_stop_at_ten_in_release_order():
    """12 test twins of training questions and 2 val twins: all are counted, the first ten test
    pairs are the examples (the docstring's "up to 10")."""
    from svrd.split import cross_split_duplicates

    pids = ["t0", "t1"] + [f"x{i}" for i in range(12)] + ["v0", "v1"]
    kept = ["train", "train"] + ["test"] * 12 + ["val", "val"]
    keys = ["A", "B"] + ["A"] * 12 + ["B", "B"]
    dup = cross_split_duplicates(pids, kept, keys)
    assert (dup["test_in_train"], dup["test_in_val"], dup["val_in_train"]) == (12, 0, 2)
    assert dup["examples"] == [[f"x{i}", "t0"] for i in range(10)]


def test_content_key_is_the_sha256_of_its_documented_framing():
    """Written out by hand: question, options sorted and joined by \\x1f, hint, each stripped and
    ended by \\x1e, then the sha256 of the image bytes (no image = no bytes, no hint = empty)."""
    import hashlib

    from svrd.split import content_key, content_keys

    framed = "Q é?\x1e" + "May\x1fjune\x1e" + "\x1e"
    want = hashlib.sha256(framed.encode("utf-8") + hashlib.sha256(b"").digest()).hexdigest()
    assert content_key(" Q é? ", ["june", " May"], None, None) == want
    framed = b"Q\x1ea\x1eh\x1e" + hashlib.sha256(b"png").digest()
    assert content_key("Q", ["a"], "h", b"png") == hashlib.sha256(framed).hexdigest()
    # a table without the content columns: every part is empty
    empty = hashlib.sha256(b"\x1e\x1e\x1e" + hashlib.sha256(b"").digest()).hexdigest()
    assert content_keys(pa.table({"pid": ["1", "2"]})) == [empty, empty]
