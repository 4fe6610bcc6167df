"""svrd.examples: target forms, conclusion styles, masking (loss on target tokens only), collation."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, corpus, fake_rationales, fake_records

from svrd.examples import (
    IGNORE_INDEX,
    Collator,
    Example,
    LengthError,
    TrainingDataset,
    build_examples,
    build_target,
    encode_prompt,
    encode_training,
    tokenizer_of,
)
from svrd.models import load_model, load_processor

PROBLEM = {"pid": "7", "choices": ["attract", "repel"], "answer": 1}
RATIONALE = {"summary": "S text.", "caption": "C text.", "reasoning": "R text.", "outcome": "agreed"}



pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- targets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("style", "conclusion"), [("letter", "B"), ("letter_text", "B. repel"), ("text", "repel")])
def test_conclusion_styles(style, conclusion):
    assert build_target(PROBLEM, None, "answer", style) == f"<CONCLUSION> {conclusion} </CONCLUSION>"
    full = build_target(PROBLEM, RATIONALE, "rationale", style)
    assert full.splitlines()[-1] == f"<CONCLUSION> {conclusion} </CONCLUSION>"


def test_rationale_target_is_the_four_stages_in_order():
    assert build_target(PROBLEM, RATIONALE, "rationale", "letter") == (
        "<SUMMARY> S text. </SUMMARY>\n<CAPTION> C text. </CAPTION>\n"
        "<REASONING> R text. </REASONING>\n<CONCLUSION> B </CONCLUSION>"
    )


def test_conclusion_comes_from_the_gold_answer_not_the_teacher():
    wrong = {**RATIONALE, "conclusion": "A", "letter": "A"}
    assert build_target(PROBLEM, wrong, "rationale", "letter").endswith("<CONCLUSION> B </CONCLUSION>")


def test_answer_target_and_answer_only_outcome():
    assert build_target(PROBLEM, RATIONALE, "answer", "letter") == "<CONCLUSION> B </CONCLUSION>"
    answer_only = {**RATIONALE, "outcome": "answer_only"}
    assert build_target(PROBLEM, answer_only, "rationale", "letter") == "<CONCLUSION> B </CONCLUSION>"


def test_rationale_after_puts_the_conclusion_first():
    lines = build_target(PROBLEM, RATIONALE, "rationale_after", "letter").splitlines()
    assert lines[0] == "<CONCLUSION> B </CONCLUSION>"
    assert [line.split(">")[0] + ">" for line in lines[1:]] == ["<SUMMARY>", "<CAPTION>", "<REASONING>"]


def test_mix_is_stable_per_pid_and_near_its_share():
    problems = [{**PROBLEM, "pid": str(i)} for i in range(400)]
    forms = [build_target(p, RATIONALE, "mix", "letter", mix_share=0.3, seed=1) for p in problems]
    again = [build_target(p, RATIONALE, "mix", "letter", mix_share=0.3, seed=1) for p in problems]
    assert forms == again
    answers = sum(f == "<CONCLUSION> B </CONCLUSION>" for f in forms)
    assert 0.22 < answers / len(forms) < 0.38
    assert all(f.startswith("<SUMMARY>") or f == "<CONCLUSION> B </CONCLUSION>" for f in forms)
    other_seed = [build_target(p, RATIONALE, "mix", "letter", mix_share=0.3, seed=2) for p in problems]
    assert other_seed != forms


def test_unknown_target_fails():
    with pytest.raises(ValueError, match="train.target"):
        build_target(PROBLEM, RATIONALE, "summary_only", "letter")


def test_build_examples_drops_questions_without_rationale_except_for_answer_target():
    recs = fake_records(3)
    rats = fake_rationales(recs[:2])
    assert [e.pid for e in build_examples(recs, rats, "rationale")] == [r["pid"] for r in recs[:2]]
    assert len(build_examples(recs, rats, "answer")) == 3
    ex = build_examples(recs, rats, "rationale", "letter_text")[0]
    assert ex.image == recs[0]["image"] and ex.prompt.startswith("Question: ")


# --- masking: the loss falls on target tokens only -------------------------------------------


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    records = fake_records(4)
    root = tmp_path_factory.mktemp("students")
    return {name: FAMILIES[name](root / name, corpus(records))["path"] for name in FAMILIES}, records


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_labels_mask_prompt_and_image_tokens(students, family):
    paths, records = students
    processor = load_processor(paths[family])
    tok = tokenizer_of(processor)
    ex = build_examples(records, fake_rationales(records), "rationale", "letter_text")[0]
    enc = encode_training(processor, ex, max_length=512)
    prompt_ids = encode_prompt(processor, ex)["input_ids"][0]
    target_ids = tok(ex.target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    labels = enc["labels"]
    first = int((labels != IGNORE_INDEX).nonzero()[0])
    assert first == len(prompt_ids)  # the first label position is exactly the first target token
    assert labels[first] == target_ids[0]
    assert labels[first:].tolist() == target_ids  # every target token (and EOS) is learned
    assert torch.equal(enc["input_ids"][:first], prompt_ids)
    image_token = tok.convert_tokens_to_ids(getattr(processor, "image_token", "<image>"))
    image_positions = (enc["input_ids"] == image_token).nonzero().flatten()
    assert len(image_positions) > 0 and bool((labels[image_positions] == IGNORE_INDEX).all())
    # PaliGemma reads token types (prefix 0: bidirectional, suffix 1: causal); the others get none
    assert ("token_type_ids" in enc) == (family == "paligemma")
    if family == "paligemma":
        assert enc["token_type_ids"][:first].eq(0).all() and enc["token_type_ids"][first:].eq(1).all()
        assert len(enc["token_type_ids"]) == len(enc["input_ids"])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_model_loss_is_cross_entropy_over_target_positions_only(students, family):
    paths, records = students
    processor = load_processor(paths[family])
    model = load_model(paths[family]).eval()
    examples = build_examples(records, fake_rationales(records), "rationale", "letter")[:3]
    batch = Collator(tokenizer_of(processor).pad_token_id)([encode_training(processor, e, 512) for e in examples])
    with torch.no_grad():
        out = model(**batch)
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(out.loss, manual, atol=1e-5)
    # the same mean over *all* next-token positions differs: the prompt and image really are excluded
    every = torch.nn.functional.cross_entropy(logits[batch["attention_mask"][:, 1:].bool()],
                                              batch["input_ids"][:, 1:][batch["attention_mask"][:, 1:].bool()])
    assert not torch.allclose(out.loss, every, atol=1e-3)
    # a cut keeps the boundary: a short max_length may cut the target's tail after its conclusion, never the
    # prompt, and never the conclusion itself
    prompt_len = len(encode_prompt(processor, examples[0])["input_ids"][0])
    after = build_examples(records, fake_rationales(records), "rationale_after", "letter")[0]
    short = encode_training(processor, after, prompt_len + 12)
    assert int((short["labels"] != IGNORE_INDEX).sum()) == 12
    with pytest.raises(LengthError, match=f"pid {examples[0].pid}: needs"):
        encode_training(processor, examples[0], prompt_len + 12)


def test_prompt_over_max_length_names_the_pid(students):
    paths, records = students
    processor = load_processor(paths["llava"])
    ex = Example("pid-9", records[0]["image"], "Question?", "<CONCLUSION> A </CONCLUSION>")
    with pytest.raises(ValueError, match="pid-9"):
        encode_training(processor, ex, max_length=8)


# --- collation ----------------------------------------------------------------------------------


def test_collator_pads_sequences_and_stacks_images():
    features = [
        {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7]),
         "token_type_ids": torch.tensor([0, 1, 1]), "pixel_values": torch.ones(1, 1, 3, 4, 4),
         "pixel_attention_mask": torch.ones(1, 1, 4, 4, dtype=torch.long)},
        {"input_ids": torch.tensor([5, 8]), "labels": torch.tensor([-100, 8]),
         "token_type_ids": torch.tensor([0, 1]), "pixel_values": torch.ones(1, 2, 3, 4, 4),
         "pixel_attention_mask": torch.ones(1, 2, 4, 4, dtype=torch.long)},
    ]
    batch = Collator(pad_token_id=0)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 8, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 8, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert {batch[k].dtype for k in ("input_ids", "labels", "attention_mask", "token_type_ids")} == {torch.long}
    assert batch["token_type_ids"].tolist() == [[0, 1, 1], [0, 1, 1]]
    # Idefics3 tiles: the shorter example is padded with an all-zero tile (and mask), which the model skips
    assert batch["pixel_values"].shape == (2, 2, 3, 4, 4)
    assert batch["pixel_values"][0, 1].abs().sum() == 0 and batch["pixel_attention_mask"][0, 1].sum() == 0


def test_collator_takes_token_types_from_a_batch_of_one():
    batch = Collator(pad_token_id=0)([{"input_ids": torch.tensor([5, 6]), "labels": torch.tensor([-100, 6]),
                                       "token_type_ids": torch.tensor([0, 1])}])
    assert batch["token_type_ids"].tolist() == [[0, 1]] and batch["attention_mask"].tolist() == [[1, 1]]


# --- lengths: measured before training, never cut silently ----------------------------------------


def _long_reasoning(records, target: str):
    """Examples whose first has a rationale ten times the others' (a teacher that rambled)."""
    rats = fake_rationales(records)
    first = records[0]["pid"]
    rats[first] = {**rats[first], "reasoning": " ".join([rats[first]["reasoning"]] * 10)}
    return build_examples(records, rats, target, "letter")


def _real_length(processor, ex) -> int:
    """Prompt as the processor encodes it + target tokens + EOS (a plain re-count, not check_lengths)."""
    tok = tokenizer_of(processor)
    return len(encode_prompt(processor, ex)["input_ids"][0]) + len(tok(ex.target, add_special_tokens=False)["input_ids"]) + 1


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prompt_lengths_agree_with_the_processor(students, family):
    """The shortcut (one anchor encode, tokenizer counts, per-size image tokens) gives the processor's
    own prompt lengths, for prompts and image sizes that differ."""
    from PIL import Image

    from svrd.examples import PromptLengths
    from svrd.images import png_bytes

    paths, records = students
    processor = load_processor(paths[family])
    examples = build_examples(records, fake_rationales(records), "rationale", "letter")
    sizes = [(640, 480), (48, 40), (300, 500), (1000, 120)]
    examples += [Example(f"s{i}", png_bytes(Image.new("RGB", size, (9, 99, 199))), f"Question {i}: " + "why? " * i)
                 for i, size in enumerate(sizes)]
    if family != "paligemma":  # PaliGemma's processor takes no image-less prompt
        examples.append(Example("no-image", None, "A question without an image."))
    measure = PromptLengths(processor)
    assert [measure(ex) for ex in examples] == [len(encode_prompt(processor, ex)["input_ids"][0]) for ex in examples]


def test_null_max_length_is_the_longest_example(students):
    paths, records = students
    processor = load_processor(paths["llava"])
    examples = _long_reasoning(records, "rationale")
    ds = TrainingDataset(processor, examples, None)
    real = [_real_length(processor, ex) for ex in examples]
    assert ds.max_length == max(real) and ds.truncated == 0
    assert ds.lengths() == real
    assert len(ds[0]["input_ids"]) == real[0]  # the long example whole, EOS included


def test_a_cut_after_the_conclusion_is_counted(students):
    """rationale_after puts the conclusion first: a long rationale may lose its tail, and that is counted."""
    paths, records = students
    processor = load_processor(paths["llava"])
    examples = _long_reasoning(records, "rationale_after")
    real = [_real_length(processor, ex) for ex in examples]
    cap = max(real[1:])  # every example fits but the long one
    ds = TrainingDataset(processor, examples, cap)
    assert real[0] > cap and ds.truncated == 1
    assert ds.lengths() == [min(n, cap) for n in real]
    item = ds[0]
    assert len(item["input_ids"]) == cap
    kept = tokenizer_of(processor).decode(item["labels"][item["labels"] != IGNORE_INDEX])
    assert "</CONCLUSION>" in kept


def test_a_cut_into_the_conclusion_is_refused_in_one_line(students):
    """The paper's target ends with the conclusion: any cut but the EOS would train a student that never
    concludes, so the dataset refuses before training, naming the pid, the length and the params."""
    paths, records = students
    processor = load_processor(paths["llava"])
    examples = _long_reasoning(records, "rationale")
    real = [_real_length(processor, ex) for ex in examples]
    cap = max(real[1:])
    with pytest.raises(LengthError) as err:
        TrainingDataset(processor, examples, cap)
    message = str(err.value)
    assert "\n" not in message
    assert f"pid {examples[0].pid}: needs {real[0]} tokens" in message
    assert f"train.max_length={cap}" in message and "student.image_tokens" in message
    # one token short of the whole target: only the EOS goes, which is counted, not refused
    assert TrainingDataset(processor, examples, real[0] - 1).truncated == 1


def test_a_length_error_ends_a_stage_with_one_line(students, capsys):
    from svrd.stage import run

    paths, records = students
    processor = load_processor(paths["llava"])

    def main():
        TrainingDataset(processor, _long_reasoning(records, "rationale"), 40)

    with pytest.raises(SystemExit) as exit_:
        run(main)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and "\n" not in err and "Traceback" not in err
    assert err.startswith("pytest: error: pid ") or ": error: pid " in err


def test_encode_training_may_cut_right_after_the_conclusion_but_not_into_it(students):
    """The backstop in encode_training itself (TrainingDataset checks first): the boundary is the last
    token of </CONCLUSION>, found here by decoding growing prefixes of the target, not by conclusion_end."""
    paths, records = students
    processor = load_processor(paths["llava"])
    tok = tokenizer_of(processor)
    ex = _long_reasoning(records, "rationale_after")[0]  # conclusion first, a long tail after it
    prompt_len = len(encode_prompt(processor, ex)["input_ids"][0])
    target_ids = tok(ex.target, add_special_tokens=False)["input_ids"]
    end = next(k for k in range(1, len(target_ids) + 1) if "</CONCLUSION>" in tok.decode(target_ids[:k]))
    enc = encode_training(processor, ex, prompt_len + end)
    assert enc["labels"][prompt_len:].tolist() == target_ids[:end]
    with pytest.raises(LengthError):
        encode_training(processor, ex, prompt_len + end - 1)


# --- a stub processor: every expected length below is counted by hand from its plain rules -----------


class _CharTok:
    """One token per character; BOS (1) only with add_special_tokens, like Llama's and Gemma's."""

    eos_token_id, pad_token_id = 2, 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + [ord(c) for c in text]}


def _n_image(width: int, height: int) -> int:
    return width // 10 + 3 * (height // 10)  # not symmetric: width and height swapped give another count


class _StubProcessor:
    """A chat template "<u>{<image>}{prompt}</u><a>", a BOS, one token per character and `_n_image`
    tokens per image. `counter`: "works", "none" (no _get_num_multimodal_tokens) or "wide-fails"
    (raises for images wider than 500 px). `quirk`: one more token for odd-length texts (a processor
    whose count is not the tokenizer's)."""

    def __init__(self, counter="works", quirk=False, mask=True, token_types=False, input_names=None):
        self.tokenizer = _CharTok()
        self.quirk, self.mask, self.token_types = quirk, mask, token_types
        self.image_encodes = self.counter_calls = 0
        if counter != "none":
            self.wide_fails = counter == "wide-fails"
            self._get_num_multimodal_tokens = self._count
        if input_names is not None:
            self.model_input_names = input_names

    def _count(self, image_sizes):
        self.counter_calls += 1
        if self.wide_fails and any(w > 500 for _, w in image_sizes):
            raise NotImplementedError
        return {"num_image_tokens": [_n_image(w, h) for h, w in image_sizes]}

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True):
        body = "".join("<image>" if c["type"] == "image" else c["text"] for c in messages[0]["content"])
        text = "<u>" + body + "</u>" + ("<a>" if add_generation_prompt else "")
        return [ord(c) for c in text] if tokenize else text  # tokenizers' default: token ids

    def __call__(self, images=None, text=None, return_tensors=None):
        (t,) = text
        parts = t.split("<image>")
        assert len(parts) - 1 == len(images or [])
        ids = [1]
        for k, part in enumerate(parts):
            if k:
                self.image_encodes += 1
                ids += [9] * _n_image(*images[k - 1].size)
            ids += [ord(c) for c in part]
        if self.quirk and len(t) % 2:
            ids.append(3)
        out = {"input_ids": torch.tensor([ids])}
        if self.mask:
            out["attention_mask"] = torch.ones(1, len(ids), dtype=torch.long)
        if self.token_types:
            out["token_type_ids"] = torch.zeros(1, len(ids), dtype=torch.long)
        return out


def _png(size):
    from PIL import Image

    from svrd.images import png_bytes

    return png_bytes(Image.new("RGB", size, (9, 99, 199)))


def _stub_len(prompt: str, size=None, quirk=False) -> int:
    """The stub's prompt length by hand: BOS + "<u>" + image tokens + prompt + "</u><a>"."""
    text_len = len("<u>") + (len("<image>") if size else 0) + len(prompt) + len("</u><a>")
    return 1 + len("<u>") + (_n_image(*size) if size else 0) + len(prompt) + len("</u><a>") + (quirk and text_len % 2)


SIZES = [(640, 480), (48, 40), (300, 500), (48, 40), (1000, 120), (640, 480)]


def _sized_examples():
    return [Example(f"s{i}", _png(size), f"Question {i}: " + "why? " * i) for i, size in enumerate(SIZES)]


def test_prompt_lengths_use_the_processors_count_and_encode_one_image():
    from svrd.examples import PromptLengths

    proc = _StubProcessor()
    measure = PromptLengths(proc)
    examples = _sized_examples()
    assert [measure(ex) for ex in examples] == [_stub_len(ex.prompt, s) for ex, s in zip(examples, SIZES, strict=True)]
    assert proc.image_encodes == 1  # the anchor; every other size is counted, not preprocessed
    assert proc.counter_calls == len(set(SIZES))  # once per size


def test_prompt_lengths_without_a_counter_encode_one_blank_image_per_size():
    from svrd.examples import PromptLengths

    proc = _StubProcessor(counter="none")
    measure = PromptLengths(proc)
    examples = _sized_examples()
    assert [measure(ex) for ex in examples] == [_stub_len(ex.prompt, s) for ex, s in zip(examples, SIZES, strict=True)]
    assert proc.image_encodes == 1 + len(set(SIZES))  # the anchor, then one blank image per size


def test_prompt_lengths_when_the_counter_fails_for_some_sizes():
    """A counter that fails for one size: every size is then measured one way (blank images)."""
    from svrd.examples import PromptLengths

    proc = _StubProcessor(counter="wide-fails")
    measure = PromptLengths(proc)
    sizes = [(48, 40), (300, 500), (640, 480), (48, 40), (60, 90)]
    examples = [Example(f"w{i}", _png(size), f"Q{i}" + "?" * i) for i, size in enumerate(sizes)]
    assert [measure(ex) for ex in examples] == [_stub_len(ex.prompt, s) for ex, s in zip(examples, sizes, strict=True)]


def test_check_lengths_encodes_every_prompt_when_the_shortcut_is_off():
    from svrd.examples import LengthCheck, check_lengths

    proc = _StubProcessor(quirk=True)
    examples = [Example("a", _png((48, 40)), "ab", "x"), Example("b", _png((300, 500)), "abcde" * 9, "yz"),
                Example("c", _png((640, 480)), "abcd", "w")]
    real = [_stub_len(ex.prompt, s, quirk=True) + len(ex.target) + 1
            for ex, s in zip(examples, [(48, 40), (300, 500), (640, 480)], strict=True)]
    assert real[1] == max(real)
    assert check_lengths(proc, examples, None) == LengthCheck(real, max(real), 0, max(real))
    # an example exactly at the limit is not cut; one over it loses its EOS (no conclusion tag: refused)
    assert check_lengths(proc, examples, max(real)) == LengthCheck(real, max(real), 0, max(real))


def test_check_lengths_of_no_examples_and_a_dataset_of_none():
    from svrd.examples import LengthCheck, check_lengths

    assert check_lengths(_StubProcessor(), [], None) == LengthCheck([], 0, 0, 0)
    assert TrainingDataset(_StubProcessor(), [], 64).max_length == 64
    assert TrainingDataset(_StubProcessor(), [], None).max_length is None  # no examples: no longest to take


def _length_message(pid, prompt, target, limit, others=""):
    from svrd.examples import LENGTH_FIX

    return (f"pid {pid}: needs {prompt + target} tokens (prompt with image tokens {prompt} + target {target}), "
            f"over train.max_length={limit}, and the cut would reach its <CONCLUSION>{others}: {LENGTH_FIX}")


def test_the_length_error_names_the_longest_refused_example_and_counts_the_others():
    from svrd.examples import check_lengths

    target = "<CONCLUSION> A </CONCLUSION>"
    examples = [Example("p2", None, "q" * 50, target), Example("p1", None, "q" * 30, target),
                Example("p3", None, "q", target)]  # the longest refused one comes first
    prompts = [_stub_len(ex.prompt) for ex in examples][1::-1] + [_stub_len("q")]  # p1, p2, p3
    t = len(target) + 1
    with pytest.raises(LengthError) as err:
        check_lengths(_StubProcessor(), examples, prompts[0] + 5)
    assert str(err.value) == _length_message("p2", prompts[1], t, prompts[0] + 5, "; 2 of 3 examples are over")
    with pytest.raises(LengthError) as err:
        check_lengths(_StubProcessor(), examples, prompts[0] + t - 2)
    assert str(err.value) == _length_message("p2", prompts[1], t, prompts[0] + t - 2, "; 2 of 3 examples are over")
    with pytest.raises(LengthError) as err:  # one over: no count
        check_lengths(_StubProcessor(), examples, prompts[1] + t - 2)
    assert str(err.value) == _length_message("p2", prompts[1], t, prompts[1] + t - 2)
    with pytest.raises(LengthError) as err:  # encode_training's backstop: the same one line
        encode_training(_StubProcessor(), examples[2], prompts[2] + 3)
    assert str(err.value) == _length_message("p3", prompts[2], t, prompts[2] + 3)


def test_target_ids_never_carry_the_tokenizers_bos():
    from svrd.examples import target_ids_of

    assert target_ids_of(_CharTok(), "ab") == [97, 98, 2]


def test_encode_training_with_the_stub_processor():
    ex = Example("e", None, "hi", "ok")
    prompt = [1] + [ord(c) for c in "<u>hi</u><a>"]
    for proc in (_StubProcessor(), _StubProcessor(mask=False)):  # a processor that gives no attention mask
        enc = encode_training(proc, ex, None)  # null max_length: nothing is cut
        assert enc["input_ids"].tolist() == prompt + [ord("o"), ord("k"), 2]
        assert enc["labels"].tolist() == [IGNORE_INDEX] * len(prompt) + [ord("o"), ord("k"), 2]
        assert set(enc) == {"input_ids", "labels"}
    # token types the model does not read are dropped, whether the processor names its inputs or not
    for proc in (_StubProcessor(token_types=True), _StubProcessor(token_types=True, input_names=["input_ids"])):
        assert "token_type_ids" not in encode_training(proc, ex, None)
    # a model that reads them but a processor that gives none
    assert "token_type_ids" not in encode_training(_StubProcessor(input_names=["input_ids", "token_type_ids"]), ex, None)

    class Gemma3Processor(_StubProcessor):  # marks image tokens, not the suffix: text is type 0 throughout
        pass

    enc = encode_training(Gemma3Processor(token_types=True, input_names=["input_ids", "token_type_ids"]), ex, None)
    assert enc["token_type_ids"].tolist() == [0] * (len(prompt) + 3)


def test_collator_keeps_image_dtypes_and_takes_a_batch_of_one_image():
    features = [
        {"input_ids": torch.tensor([5, 6]), "labels": torch.tensor([-100, 6]),
         "pixel_values": torch.ones(1, 1, 3, 4, 4, dtype=torch.bfloat16),
         "pixel_attention_mask": torch.ones(1, 1, 4, 4, dtype=torch.long)},
        {"input_ids": torch.tensor([5]), "labels": torch.tensor([-100]),
         "pixel_values": torch.ones(1, 2, 3, 4, 4, dtype=torch.bfloat16),
         "pixel_attention_mask": torch.ones(1, 2, 4, 4, dtype=torch.long)},
    ]
    batch = Collator(pad_token_id=0)(features)
    assert batch["pixel_values"].dtype == torch.bfloat16 and batch["pixel_attention_mask"].dtype == torch.long
    one = Collator(pad_token_id=0)(features[:1])
    assert torch.equal(one["pixel_values"], features[0]["pixel_values"])
