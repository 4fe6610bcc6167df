"""`svrd score-open`: BLEU, ROUGE-1/2/L and BERTScore of free-form answers (the paper's Table 2).

BLEU and ROUGE are checked against hand computations (and ROUGE also against a plain n-gram / LCS
implementation written here); BERTScore runs offline on a tiny random RoBERTa saved locally.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from svrd.cli import main
from svrd.open_scoring import pair_up, read_answers, score_open

# Three answers: identical, a reordering, unrelated. Every word is its own Porter stem and there
# is no punctuation, so tokens are the space-separated words for BLEU (13a) and ROUGE alike.
REFS = {"q1": "the cat sat on the mat", "q2": "the dog ran in a park", "q3": "red"}
HYPS = {"q1": "the cat sat on the mat", "q2": "a dog ran in the big park", "q3": "blue"}


def _ngrams(words, n):
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _f1(overlap, hyp_total, ref_total):
    if not overlap:
        return 0.0
    p, r = overlap / hyp_total, overlap / ref_total
    return 2 * p * r / (p + r)


def plain_rouge_n(hyp, ref, n):
    h, r = _ngrams(hyp.split(), n), _ngrams(ref.split(), n)
    return _f1(sum((h & r).values()), sum(h.values()), sum(r.values()))


def plain_rouge_l(hyp, ref):
    a, b = hyp.split(), ref.split()
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return _f1(table[-1][-1], len(a), len(b))


def test_rouge_matches_hand_computation_and_a_plain_implementation():
    m = score_open(list(HYPS.values()), list(REFS.values()), bertscore_model=None)
    # By hand, per pair (identical, reordering of 7 words against 6, unrelated); F1 = 2PR / (P + R):
    #   ROUGE-1: 1, 6 shared words, P 6/7, R 6/6 -> 12/13, 0
    #   ROUGE-2: 1, {dog ran, ran in}, P 2/6, R 2/5 -> 4/11, 0
    #   ROUGE-L: 1, LCS "dog ran in park", P 4/7, R 4/6 -> 8/13, 0
    hand = {"rouge1": (1 + 12 / 13 + 0) / 3, "rouge2": (1 + 4 / 11 + 0) / 3, "rougeL": (1 + 8 / 13 + 0) / 3}
    plain = {
        "rouge1": sum(plain_rouge_n(HYPS[k], REFS[k], 1) for k in REFS) / 3,
        "rouge2": sum(plain_rouge_n(HYPS[k], REFS[k], 2) for k in REFS) / 3,
        "rougeL": sum(plain_rouge_l(HYPS[k], REFS[k]) for k in REFS) / 3,
    }
    for kind in hand:
        assert plain[kind] == pytest.approx(hand[kind])
        assert m[kind] == pytest.approx(100 * hand[kind], abs=0.005)
    assert m["n"] == 3 and "bertscore_f1" not in m


def test_bleu_matches_hand_computation():
    m = score_open(list(HYPS.values()), list(REFS.values()), bertscore_model=None)
    # Corpus counts over the three pairs (14 hypothesis words, 13 reference words: no brevity penalty):
    #   1-grams 6+6+0 = 12 of 14; 2-grams 5+2+0 = 7 of 11; 3-grams 4+1+0 = 5 of 9; 4-grams 3+0 = 3 of 7.
    expected = 100 * (12 / 14 * 7 / 11 * 5 / 9 * 3 / 7) ** 0.25
    assert m["bleu"] == pytest.approx(expected, abs=0.005)  # 60.03
    # Brevity penalty: 4 of the reference's 6 words, every n-gram matching -> exp(1 - 6/4).
    short = score_open(["the cat sat on"], ["the cat sat on the mat"], bertscore_model=None)
    assert short["bleu"] == pytest.approx(100 * math.exp(1 - 6 / 4), abs=0.005)  # 60.65


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def _jsonl(path, mapping, id_key="id", answer_key="answer"):
    return _write(path, "".join(json.dumps({id_key: k, answer_key: v}) + "\n" for k, v in mapping.items()))


def test_input_formats_read_the_same(tmp_path):
    as_jsonl = read_answers(_jsonl(tmp_path / "a.jsonl", REFS))
    as_object = read_answers(_write(tmp_path / "b.json", json.dumps(REFS)))
    as_list = read_answers(_write(tmp_path / "c.json", json.dumps([{"id": k, "answer": v} for k, v in REFS.items()])))
    as_llava = read_answers(_jsonl(tmp_path / "d.jsonl", REFS, "question_id", "text"))
    assert as_jsonl == as_object == as_list == as_llava == REFS
    numeric = read_answers(_write(tmp_path / "e.jsonl", '{"id": 7, "answer": "x"}\n'))
    assert numeric == {"7": "x"}  # ids compared as strings
    ids, hyps, refs = pair_up({"q2": "b", "q1": "a"}, {"q1": "A", "q2": "B"})
    assert (ids, hyps, refs) == (["q1", "q2"], ["a", "b"], ["A", "B"])


def test_cli_prints_table_2_and_writes_metrics(tmp_path, capsys):
    out = tmp_path / "open.json"
    code = main(["score-open", _jsonl(tmp_path / "student.jsonl", HYPS), _jsonl(tmp_path / "refs.jsonl", REFS),
                 "--no-bertscore", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    lines = printed.splitlines()
    assert lines[0] == "## Open-ended answers (the paper's Table 2)"
    assert lines[2] == ("| model | n | BLEU | ROUGE-1 | ROUGE-2 | ROUGE-L | BERTScore P | BERTScore R | BERTScore F1 |")
    assert lines[4] == "| student | 3 | 60.03 | 64.10 | 45.45 | 53.85 | – | – | – |"
    assert json.loads(out.read_text())["rougeL"] == 53.85


MALFORMED = {
    "not JSON": ('{"id": "q1", "answer": "x"}\n{"id": "q2", "ans', "line 2 is not JSON"),
    "no answer field": ('{"id": "q1", "answer": "x"}\n{"id": "q2", "output": "y"}\n', "line 2 has no answer field"),
    "no id field": ('[{"answer": "x"}]', "record 1 has no id field"),
    "answer not text": ('{"q1": 3}', "id 'q1': answer 3 is not text"),
    "id twice": ('{"id": "q1", "answer": "x"}\n{"id": "q1", "answer": "y"}\n', "id 'q1' appears twice"),
    "not objects": ("[1, 2]", "record 1 is not a JSON object"),
    "empty": ("\n", "no answers"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_is_one_clear_line(tmp_path, capsys, case):
    text, message = MALFORMED[case]
    preds = _write(tmp_path / "preds.jsonl", text)
    code = main(["score-open", preds, _jsonl(tmp_path / "refs.jsonl", REFS), "--no-bertscore"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"svrd score-open: error: {preds}: {message}"), err
    assert 'expected JSONL of {"id": ..., "answer": "..."}' in err


def test_ids_must_match_both_ways(tmp_path, capsys):
    refs = _jsonl(tmp_path / "refs.jsonl", REFS)
    extra = _jsonl(tmp_path / "extra.jsonl", {**HYPS, "q9": "x"})
    assert main(["score-open", extra, refs, "--no-bertscore"]) == 2
    assert "1 ids are not in" in capsys.readouterr().err
    fewer = _jsonl(tmp_path / "fewer.jsonl", {"q1": HYPS["q1"]})
    assert main(["score-open", fewer, refs, "--no-bertscore"]) == 2
    err = capsys.readouterr().err
    assert "2 ids of" in err and "have no prediction" in err and "'q2'" in err


# ---------------------------------------------------------------- BERTScore, offline

@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
    """A 2-layer random RoBERTa with a byte-level BPE tokenizer trained here, saved like a Hub model."""
    pytest.importorskip("bert_score")
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    folder = tmp_path_factory.mktemp("tiny-roberta")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([*REFS.values(), *HYPS.values()] * 4, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    tokenizer = RobertaTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=64)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=80, pad_token_id=1)
    RobertaModel(config).save_pretrained(folder)
    return str(folder)


def test_bertscore_offline_with_a_tiny_encoder(tiny_roberta):
    """A few seconds: imports bert-score (pandas, matplotlib) and runs a 2-layer encoder."""
    same = score_open(["the cat sat on the mat", "red"], ["the cat sat on the mat", "red"],
                      bertscore_model=tiny_roberta, num_layers=1, device="cpu")
    assert (same["bertscore_p"], same["bertscore_r"], same["bertscore_f1"]) == (100.0, 100.0, 100.0)
    mixed = score_open(list(HYPS.values()), list(REFS.values()), bertscore_model=tiny_roberta, device="cpu")
    assert mixed["bertscore_layers"] == 2  # a model bert-score does not know: its last layer
    for key in ("bertscore_p", "bertscore_r", "bertscore_f1"):
        assert -100.0 <= mixed[key] < 100.0
    assert mixed["bertscore_model"] == tiny_roberta and mixed["bertscore_rescaled"] is False
    # One pair: F1 is the harmonic mean of its precision and recall (which differ: 7 words against 6).
    one = score_open([HYPS["q2"]], [REFS["q2"]], bertscore_model=tiny_roberta, device="cpu")
    p, r = one["bertscore_p"], one["bertscore_r"]
    assert p != r and one["bertscore_f1"] == pytest.approx(2 * p * r / (p + r), abs=0.02)


def test_bertscore_cli_and_unloadable_model(tiny_roberta, tmp_path, capsys):
    args = ["score-open", _jsonl(tmp_path / "p.jsonl", HYPS), _jsonl(tmp_path / "r.jsonl", REFS), "--device", "cpu"]
    assert main([*args, "--bertscore-model", tiny_roberta, "--bertscore-layers", "1", "--name", "tiny"]) == 0
    captured = capsys.readouterr()
    row = captured.out.splitlines()[4].split(" | ")
    assert row[0] == "| tiny" and all(cell != "–" for cell in row[6:])
    assert f"BERTScore: {tiny_roberta} layer 1" in captured.out
    empty = tmp_path / "no-model"
    empty.mkdir()
    assert main([*args, "--bertscore-model", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"BERTScore model '{empty}' could not be loaded" in err and "--no-bertscore" in err
    assert "Traceback" not in err
