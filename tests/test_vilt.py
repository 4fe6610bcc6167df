"""The ViLT answer adapter: options mapped onto a VQA classifier's answer vocabulary, never a guess.

The mapping and choice are checked with hand-set logits; the whole adapter runs on a tiny random
ViltForQuestionAnswering (built from a config with a 6-answer id2label, a WordPiece tokenizer
written here), and its choices are checked against the model's own logits read in the test.
"""

from __future__ import annotations

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
def tiny_vilt(tmp_path_factory):
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
    return ViltForQuestionAnswering.from_pretrained(folder), ViltProcessor.from_pretrained(folder)


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
