"""The embedded base student: its chat template, and what its caption pre-training may see."""

from __future__ import annotations

import pytest

from svrd.examples import messages_for
from svrd.tiny import build_tiny_student, caption_examples

SMALL = dict(vocab_size=300, image_size=32, patch_size=16, vision_width=32, vision_layers=1, text_width=32,
             text_layers=1, heads=2)
PROMPT = "Question: Which material is this spoon made of?\nOptions:\n(A) metal\n(B) wood"


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from svrd.models import load_processor

    out = tmp_path_factory.mktemp("tiny") / "student"
    build_tiny_student(out, [PROMPT, "<CONCLUSION> wood </CONCLUSION>"] * 5, **SMALL)
    return load_processor(str(out))


def test_prompt_ends_its_turn_on_a_newline(processor):
    """transformers renders templates with trim_blocks: a newline right after a block tag vanished, and
    '(B) wood' ran into 'ASSISTANT:'. The expected text is written out by hand."""
    text = processor.apply_chat_template(messages_for(PROMPT, True), add_generation_prompt=True, tokenize=False)
    assert text == "USER: <image>\n" + PROMPT + "\nASSISTANT:"


def test_last_option_tokenizes_as_in_a_target(processor):
    tok = processor.tokenizer
    text = processor.apply_chat_template(messages_for(PROMPT, False), add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    option = tok("(B) wood", add_special_tokens=False)["input_ids"]
    tail = tok("\nASSISTANT:", add_special_tokens=False)["input_ids"]
    assert prompt_ids[-len(tail) - len(option):] == option + tail


def test_a_finished_turn_ends_on_a_newline(processor):
    messages = messages_for("hi", False) + [{"role": "assistant", "content": [{"type": "text", "text": "yes"}]}]
    assert processor.apply_chat_template(messages, tokenize=False) == "USER: hi\nASSISTANT: yes</s>\n"


def test_caption_pretraining_sees_no_question_option_answer_or_rationale():
    rows = [{"pid": "1", "image": b"png", "caption": " Two magnets. ", "question": "SECRET-Q", "choices": ["SECRET-O"],
             "answer": 0, "solution": "SECRET-S", "lecture": "SECRET-L", "hint": "SECRET-H"},
            {"pid": "2", "image": None, "caption": "no image"},
            {"pid": "3", "image": b"png", "caption": "  "}]
    examples = caption_examples(rows, "Describe the image.")
    assert [(e.pid, e.image, e.prompt, e.target) for e in examples] == [("1", b"png", "Describe the image.", "Two magnets.")]


@pytest.mark.parametrize("offline", ["1", "0"])
def test_a_saved_processor_does_not_depend_on_hub_offline(processor, tmp_path, monkeypatch, offline):
    """Re-saving a loaded student must give the same files whether HF_HUB_OFFLINE is set or not (it
    was written into tokenizer_config.json as local_files_only, so an offline run hashed differently)."""
    import json

    from svrd.models import load_processor

    src = tmp_path / "src"
    processor.save_pretrained(src)
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    load_processor(str(src)).save_pretrained(tmp_path / "again")
    config = json.loads((tmp_path / "again" / "tokenizer_config.json").read_text())
    assert "local_files_only" not in config
    assert (tmp_path / "again" / "tokenizer_config.json").read_bytes() == (src / "tokenizer_config.json").read_bytes()


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16"])
def test_pretraining_computes_in_the_precision_params_name(precision):
    """tiny.pretrain.precision reaches the training loop (it was fixed at fp32, so a CPU with native bf16
    pre-trained at fp32's speed whatever params.yaml said)."""
    from svrd.params import load_params
    from svrd.tiny import pretrain_config

    p = load_params().tiny.pretrain.model_copy(update={"precision": precision})
    assert pretrain_config(p, seed=0).precision == precision
