"""The ViLT answer adapter: options mapped onto a VQA classifier's answer vocabulary, never a guess.

The mapping and choice are checked with hand-set logits; the whole adapter runs on a tiny random
ViltForQuestionAnswering (built from a config with a 6-answer id2label, a WordPiece tokenizer
written here), and its choices are checked against the model's own logits read in the test.
"""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from svrd.baselines.vilt import LabelIndex, ViltAnswerer, choose_option

ID2LABEL = {0: "yes", 1: "no", 2: "red", 3: "blue", 4: "new hampshire", 5: "magnet"}
INDEX = LabelIndex.from_id2label(ID2LABEL)


def test_options_map_exactly_or_by_best_word_match():
    assert INDEX.labels_for("Yes") == (0,)  # case and punctuation normalized
    assert INDEX.labels_for("New Hampshire.") == (4,)
    assert INDEX.labels_for("New Hampshire colony") == (4,)  # word-overlap F1 2*(2/3*1)/(5/3) = 0.8
    assert INDEX.labels_for("a magnet") == (5,)  # articles left out
    assert INDEX.labels_for("Maryland") == ()  # no shared word
    assert INDEX.labels_for("red and white stripes") == ()  # F1 2*(1/4*1)/(5/4) = 0.4 < 0.5
    assert INDEX.labels_for("") == ()


def test_choice_follows_the_logits_of_mapped_options():
    logits = [0.1, 0.9, 0.3, 0.7, -1.0, 0.0]
    assert choose_option(logits, ["yes", "no"], INDEX) == 1
    assert choose_option(logits, ["red", "blue"], INDEX) == 1
    assert choose_option([2.0, *logits[1:]], ["no", "Yes"], INDEX) == 1
    # An option that maps to nothing cannot win, whatever the others score.
    assert choose_option(logits, ["Maryland", "New Hampshire"], INDEX) == 1


def test_never_guesses():
    logits = [0.1, 0.9, 0.3, 0.7, -1.0, 0.0]
    assert choose_option(logits, ["Maryland", "Vermont"], INDEX) is None  # no option maps
    assert choose_option(logits, ["New Hampshire", "new hampshire colony"], INDEX) is None  # same label: a tie
    assert choose_option(logits, [], INDEX) is None


@pytest.fixture(scope="module")
def tiny_vilt_folder(tmp_path_factory):
    """A tiny random ViltForQuestionAnswering and its processor, saved (as a Hub download would be)."""
    from transformers import (
        BertTokenizer,
        ViltConfig,
        ViltForQuestionAnswering,
        ViltImageProcessor,
        ViltProcessor,
    )

    folder = tmp_path_factory.mktemp("tiny-vilt")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "color", "is", "the", "magnet", "which",
             "colony", "shown", "?", "does", "it", "attract"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(folder / "vocab.txt"), model_max_length=40)
    image_processor = ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=32)
    processor = ViltProcessor(image_processor=image_processor, tokenizer=tokenizer)
    torch.manual_seed(0)
    config = ViltConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, image_size=32, patch_size=16, max_position_embeddings=40,
                        id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()})
    model = ViltForQuestionAnswering(config)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_vilt(tiny_vilt_folder):
    from transformers import ViltForQuestionAnswering, ViltProcessor

    return ViltForQuestionAnswering.from_pretrained(tiny_vilt_folder), ViltProcessor.from_pretrained(tiny_vilt_folder)


def _images(n):
    return [Image.new("RGB", (48, 32), color=(40 * i, 200 - 30 * i, 90)) for i in range(n)]


def test_tiny_vilt_answers_by_its_own_logits(tiny_vilt):
    model, processor = tiny_vilt
    answerer = ViltAnswerer(model, processor)
    questions = ["what color is the magnet?", "which colony is shown?", "does it attract?"]
    choices = [["red", "blue"], ["Maryland", "New Hampshire colony"], ["Maryland", "Vermont"]]
    images = _images(3)
    picked = answerer.answer(images, questions, choices)
    # The oracle: the model's logits read here, options mapped by hand (red 2, blue 3, NH 4).
    with torch.inference_mode():
        inputs = processor(images=images, text=questions, return_tensors="pt", padding=True)
        logits = model(**inputs).logits
    assert logits.shape == (3, len(ID2LABEL))
    assert picked[0] == (0 if logits[0, 2] > logits[0, 3] else 1)
    # Steer the classifier's bias: the choice follows whichever of "red" / "blue" it favours.
    bias = model.classifier[-1].bias
    saved = bias.detach().clone()
    try:
        for favoured, expected in ((3, 1), (2, 0)):
            with torch.no_grad():
                bias.copy_(saved)
                bias[favoured] += 50.0
            assert answerer.answer(images[:1], questions[:1], choices[:1]) == [expected]
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert picked[1] == 1  # the only option that maps
    assert picked[2] is None  # none maps
    # Batched and one at a time agree (padding does not change a question's answer).
    alone = [answerer.answer([img], [q], [c])[0] for img, q, c in zip(images, questions, choices, strict=True)]
    assert alone == picked


# ------------------------------------------------------------------ through the infer and score stages

def _test_rows() -> list[dict]:
    """Sample-shaped test rows: colour questions (red and blue map onto the labels, green and yellow
    do not), one whose options map to nothing (a null answer), one without an image."""
    from tiny_models import fake_records

    from svrd.images import open_png, png_bytes

    rows = fake_records(6, seed=3)
    for i, row in enumerate(rows):
        row.update(subject="natural science", topic="physics", grade="grade4" if i % 2 else "grade8", split="test")
        # At most 52 px wide: the tiny processor's 32-px shortest edge caps the longer one at 53 px.
        row["image"] = png_bytes(open_png(row["image"]).resize((44 + i, 32)))
    rows[4].update(question="Which colony is shown?", choices=["Maryland", "Vermont"], answer=0)
    rows[5]["image"] = None
    return rows


def _write_split(root, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tiny_models import fake_records

    split = root / "data" / "split"
    split.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), split / "test.parquet")
    for s in ("train", "val"):
        others = [{**r, "pid": f"{s}{r['pid']}", "split": s} for r in fake_records(2)]
        pq.write_table(pa.Table.from_pylist(others), split / f"{s}.parquet")


def test_vilt_entry_runs_through_the_infer_stage_and_is_scored(tiny_vilt_folder, tiny_vilt, tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from svrd.evaluate import score_models
    from svrd.images import open_png
    from svrd.infer.run import run_inference
    from svrd.infer.schema import PREDICTION_SCHEMA
    from svrd.io import read_rows, write_json, write_table
    from svrd.params import load_params
    from svrd.stage import INFER_DIR, METRICS, SPLIT_DIR

    repo = Path(__file__).resolve().parents[1]
    folder = str(tiny_vilt_folder)
    params = load_params(repo / "params.yaml").with_overrides({
        "infer.models": {"vilt": {"path": folder, "dep": folder}}, "infer.batch_size": 4, "infer.mode": "generate",
        "infer.engine": "hf"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SVRD_CACHE_DIR", str(tmp_path / "cache"))
    rows = _test_rows()
    _write_split(tmp_path, rows)
    # What stages/infer.py does.
    preds, stats = run_inference(params, "vilt", read_rows(SPLIT_DIR / "test.parquet"))
    write_table(INFER_DIR / "vilt" / "predictions.parquet", preds, PREDICTION_SCHEMA)
    write_json(METRICS / "infer" / "vilt.json", stats)

    # The oracle: the model's own logits, options mapped by hand (red: label 2, blue: label 3).
    model, processor = tiny_vilt
    images = [open_png(r["image"]) if r["image"] is not None else Image.new("RGB", (384, 384), (255, 255, 255))
              for r in rows]
    with torch.inference_mode():
        inputs = processor(images=images, text=[r["question"] for r in rows], return_tensors="pt", padding=True)
        logits = model(**inputs).logits
    colours = rows[0]["choices"]  # red, green, blue, yellow
    expected = [colours.index("red") if lg[2] > lg[3] else colours.index("blue") for lg in logits]
    expected[4] = None  # Maryland / Vermont: no label, no guess
    assert [p["pid"] for p in preds] == [r["pid"] for r in rows]
    assert [p["choice"] for p in preds] == expected
    assert [p["choice_text"] for p in preds] == expected
    assert [p["raw"] for p in preds] == [ID2LABEL[int(lg.argmax())] for lg in logits]
    assert {p["mode"] for p in preds} == {"generate"} and {p["new_tokens"] for p in preds} == {0}
    assert stats["unparseable"] == stats["unmapped"] == 1 and stats["questions"] == len(rows)
    assert not os.listdir(tmp_path / "cache" / "infer")  # the partial log is gone once finished

    # What stages/score.py does.
    score_models(["vilt"])
    scores = json.loads((tmp_path / "metrics" / "scores.json").read_text())["vilt"]
    gold = sum(e == r["answer"] for e, r in zip(expected, rows, strict=True))
    assert scores["all"]["correct"] == gold and scores["all"]["total"] == len(rows)
    assert scores["unparseable"] == 1


@pytest.mark.parametrize(("setting", "value"), [("infer.mode", "likelihood"), ("infer.mode", "self_consistency"),
                                                ("infer.engine", "vllm")])
def test_vilt_entry_refuses_other_modes_naming_the_entry(tiny_vilt_folder, tmp_path, monkeypatch, setting, value):
    from pathlib import Path

    from svrd.errors import SvrdError
    from svrd.infer.run import run_inference
    from svrd.params import load_params

    folder = str(tiny_vilt_folder)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml").with_overrides({
        "infer.models": {"vilt_vqa": {"path": folder, "dep": folder}}, "infer.mode": "generate", "infer.engine": "hf"})
    params = params.with_overrides({setting: value})
    monkeypatch.setenv("SVRD_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SvrdError, match=f"infer.models.vilt_vqa is a ViLT classifier.*{value}"):
        run_inference(params, "vilt_vqa", _test_rows())
