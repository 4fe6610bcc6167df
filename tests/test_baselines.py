"""The paper's Table 1 baselines that transformers loads natively, through the infer and score stages.

LLaVA-NeXT (llava-hf/llava-v1.6-mistral-7b-hf) and KOSMOS-2 (microsoft/kosmos-2-patch14-224) are
built here as tiny random models of the real architecture: the published image processing
(LLaVA-NeXT: 336-px CLIP tiles chosen among image_grid_pinpoints, anyres; KOSMOS-2: 224 px, 64
latent queries) and the real prompt format (LLaVA-NeXT: the processor's chat template as published;
KOSMOS-2: svrd.baselines.kosmos2's grounded question-answer prompt), with narrow random layers and a
small BPE tokenizer trained here. Nothing is downloaded. (ViLT, a classifier: tests/test_vilt.py.)

Each family runs through svrd.infer.run.run_inference (what stages/infer.py runs) and its predictions
through svrd.evaluate.score_models (what stages/score.py runs). So that the scored numbers can be
checked, the saved generation config scripts the greedy output (a sequence bias, applied by
`generate` on top of the model's own logits): every question gets the same answer, and the
expected accuracy is counted from the gold answers here. Batch independence is checked on the
model's own (unscripted) logits.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from tiny_models import corpus, fake_records

from svrd.baselines import kosmos2
from svrd.baselines.kosmos2 import strip_grounding
from svrd.errors import SvrdError
from svrd.images import open_png, png_bytes

REPO = Path(__file__).resolve().parents[1]
VOCAB = 400
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # preprocessor_config.json of both (OpenAI CLIP)
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# llava-hf/llava-v1.6-mistral-7b-hf: preprocessor_config.json, processor_config.json, config.json.
LLAVA_NEXT = {
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "size": 336,  # size.shortest_edge and crop_size: the CLIP ViT-L/14-336 tile
    "patch_size": 14,
    "resample": 3,  # bicubic
    "vision_feature_select_strategy": "default",  # CLS dropped
    "num_additional_image_tokens": 1,  # the CLS token
    "vision_feature_layer": -2,
}
# chat_template.json of llava-hf/llava-v1.6-mistral-7b-hf (Mistral's [INST] format; image first).
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> '}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
# microsoft/kosmos-2-patch14-224: preprocessor_config.json (CLIPImageProcessor with use_square_size,
# which transformers keeps "for backwards compatibility of KOSMOS-2": the whole image squashed to
# 224x224, no crop), config.json (CLIP ViT-L/14 at 224, 64 latent queries; ids <s> 0, <pad> 1,
# </s> 2, <unk> 3, as in XLM-R's vocabulary).
KOSMOS2 = {"size": 224, "patch_size": 14, "latent_query_num": 64, "resample": 3}


def _records() -> list[dict]:
    """ScienceQA-shaped rows whose images differ in size, so LLaVA-NeXT picks different tile grids:
    40x32 -> 336x672 (2 tiles + base view), 700x700 -> 672x672 (4 + 1), 1000x300 -> 336x1008 (3 + 1)."""
    rows = fake_records(6, seed=3)
    sizes = [(40, 32), (700, 700), (1000, 300), (44, 32), (48, 32), (52, 32)]
    for i, (row, size) in enumerate(zip(rows, sizes, strict=True)):
        row["image"] = png_bytes(Image.new("RGB", size, (30 * i, 200 - 20 * i, 90)))
        row.update(subject="natural science", topic="physics", grade="grade4" if i % 2 else "grade8",
                   split="test")
    return rows


def scripted_copy(folder: Path, dest: Path, text: str) -> Path:
    """The model of `folder` whose greedy decoding writes `text` then EOS, whatever its random weights
    say: a copy whose generation_config.json carries one sequence bias per prefix of the text's
    tokens, longer prefixes biased more (so a repeated token cannot branch)."""
    from transformers import GenerationConfig

    from svrd.models import load_processor

    shutil.copytree(folder, dest)
    tokenizer = load_processor(str(folder)).tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    config = GenerationConfig.from_pretrained(dest)
    config.sequence_bias = [[ids[: k + 1], 1000.0 * (k + 1)] for k in range(len(ids))]
    config.save_pretrained(dest)
    return dest


def _save(model, processor, tokenizer, folder: Path) -> None:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def build_llava_next(folder: Path, texts: list[str], seed: int = 0) -> Path:
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
        MistralConfig,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from svrd.tiny import train_tokenizer

    cfg = LLAVA_NEXT
    tokenizer = train_tokenizer(texts, VOCAB)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": cfg["size"]}, crop_size={"height": cfg["size"], "width": cfg["size"]},
        image_grid_pinpoints=cfg["image_grid_pinpoints"], resample=cfg["resample"], do_pad=True,
        image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=cfg["patch_size"],
                                   vision_feature_select_strategy=cfg["vision_feature_select_strategy"],
                                   num_additional_image_tokens=cfg["num_additional_image_tokens"],
                                   chat_template=LLAVA_NEXT_TEMPLATE)
    vision = CLIPVisionConfig(image_size=cfg["size"], patch_size=cfg["patch_size"], hidden_size=32,
                              intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32)
    text = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32768,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    config = LlavaNextConfig(vision_config=vision, text_config=text,
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                             image_grid_pinpoints=cfg["image_grid_pinpoints"],
                             vision_feature_select_strategy=cfg["vision_feature_select_strategy"],
                             vision_feature_layer=cfg["vision_feature_layer"])
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    _save(model, processor, tokenizer, folder)
    return folder


def _xlmr_like_tokenizer(texts: list[str]):
    """A small byte-level BPE with XLM-R's special tokens at XLM-R's ids (<s> 0, <pad> 1, </s> 2, <unk> 3):
    KOSMOS-2's processor puts its 64 image placeholders at <unk>'s id + 1 onwards."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def build_kosmos2(folder: Path, texts: list[str], seed: int = 0) -> Path:
    from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration, Kosmos2Processor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    cfg = KOSMOS2
    tokenizer = _xlmr_like_tokenizer(texts)
    image_processor = CLIPImageProcessorPil(use_square_size=True, size={"shortest_edge": cfg["size"]},
                                            do_center_crop=False, resample=cfg["resample"],
                                            image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = Kosmos2Processor(image_processor, tokenizer)  # adds its 11 tags and 1,024 patch-index tokens
    config = Kosmos2Config(
        text_config={"vocab_size": len(tokenizer), "embed_dim": 64, "layers": 2, "ffn_dim": 128, "attention_heads": 2,
                     "max_position_embeddings": 2048, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": cfg["size"], "patch_size": cfg["patch_size"]},
        latent_query_num=cfg["latent_query_num"])
    torch.manual_seed(seed)
    model = Kosmos2ForConditionalGeneration(config)
    _save(model, processor, processor.tokenizer, folder)
    return folder


LLAVA_NEXT_SAYS = "The answer is (B) green."
# What KOSMOS-2 writes under <grounding>: a phrase linked to an image region. Unstripped,
# extract_choice finds no option in it (checked below).
KOSMOS2_SAYS = "<phrase> The answer</phrase><object><patch_index_0044><patch_index_0863></object> is B."
BUILDERS = {"llava_next": (build_llava_next, LLAVA_NEXT_SAYS), "kosmos2": (build_kosmos2, KOSMOS2_SAYS)}


@pytest.fixture(scope="module")
def built(tmp_path_factory, one_torch_thread):
    """Each family twice: its own random weights, and the same weights with the output scripted."""
    root = tmp_path_factory.mktemp("baselines")
    texts = corpus(fake_records())
    out = {}
    for family, (build, says) in BUILDERS.items():
        plain = build(root / family, texts)
        out[family] = {"plain": plain, "scripted": scripted_copy(plain, root / f"{family}-scripted", says)}
    return out


# ---------------------------------------------------------------- KOSMOS-2's grounding markup


def test_grounding_markup_is_stripped():
    raw = ("<phrase> The magnet</phrase><object><patch_index_0044><patch_index_0863></object> attracts"
           "<phrase> the nail</phrase><object><patch_index_0005><patch_index_0911></delimiter_of_multi_objects/>"
           "<patch_index_0100><patch_index_0200></object>. The answer is (A) attract.")
    assert strip_grounding(raw) == "The magnet attracts the nail. The answer is (A) attract."
    assert strip_grounding("<grounding> plain text") == "plain text"
    # svrd's stage tags and a "<" in an answer are not KOSMOS-2's markup: kept (the processor's own
    # cleanup, re.sub("<.*?>", ""), would drop them).
    assert strip_grounding("<CONCLUSION> x < 5 and y > 3 </CONCLUSION>") == "<CONCLUSION> x < 5 and y > 3 </CONCLUSION>"


def test_grounding_strip_agrees_with_the_processor_on_its_own_markup():
    from transformers.models.kosmos2.processing_kosmos2 import clean_text_and_extract_entities_with_bboxes

    # The example of transformers' docstring (the processor's post_process_generation after </image>).
    text = ("<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>"
            " warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>.")
    assert strip_grounding(text) == "An image of a snowman warming himself by a fire."
    assert strip_grounding(text) == clean_text_and_extract_entities_with_bboxes(text)[0]


def test_kosmos2_prompt_is_the_grounded_question_answer_format(built):
    from svrd.examples import encode_prompt
    from svrd.infer.encoding import examples_from_rows
    from svrd.models import count_image_tokens, load_model, load_processor

    folder = built["kosmos2"]["plain"]
    model, processor = kosmos2.adapt(load_model(str(folder)), load_processor(str(folder)))
    rec = _records()[1]
    example = examples_from_rows([rec])[0]
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                          "text": example.prompt}]}], add_generation_prompt=True, tokenize=False)
    assert text == ("<grounding> Question: Which color is the square?\nContext: Look at the picture.\nOptions:\n"
                    "(A) red\n(B) green\n(C) blue\n(D) yellow\nAnswer:")
    enc = encode_prompt(processor, example)
    tok = processor.tokenizer
    ids = enc["input_ids"][0].tolist()
    # <s> <image> 64 placeholders (ids <unk>+1 ...) </image> <grounding> ..., as the processor lays it out
    assert ids[:2] == [tok.bos_token_id, tok.convert_tokens_to_ids("<image>")]
    assert ids[2:66] == list(range(tok.unk_token_id + 1, tok.unk_token_id + 65))
    assert ids[66:68] == tok.convert_tokens_to_ids(["</image>", "<grounding>"])
    assert enc["image_embeds_position_mask"][0].tolist()[:67] == [0, 0] + [1] * 64 + [0]
    assert count_image_tokens(processor) == 64  # metrics/infer/NAME.json's image_tokens
    with pytest.raises(SvrdError, match="not supported for KOSMOS-2"):
        kosmos2.adapt(model, processor, "likelihood")


# ---------------------------------------------------------------- LLaVA-NeXT's anyres image tokens


def test_llava_next_image_tokens_follow_the_anyres_grid(built):
    from svrd.models import count_image_tokens, load_processor

    processor = load_processor(str(built["llava_next"]["plain"]))
    # 640x480 picks the 672x672 grid (2x2 tiles; 1.05x fits 672x504, all of the image's pixels); its
    # 48x48 features are unpadded to 36 rows (480 * 48/640), + a newline per row, + the 24x24 base
    # view, CLS dropped: 36*48 + 36 + 576 = 2,340 (LlavaNextProcessor._get_number_of_features by hand).
    assert count_image_tokens(processor) == 2340
    enc = processor(images=[open_png(r["image"]) for r in _records()[:3]],
                    text=["<image>"] * 3, return_tensors="pt", padding=True)
    assert enc["pixel_values"].shape[1:] == (5, 3, 336, 336)  # tiles padded to the batch's most (4 + 1)
    assert enc["image_sizes"].tolist() == [[32, 40], [700, 700], [300, 1000]]


# ---------------------------------------------------------------- batches


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_a_question_gets_the_same_logits_in_any_batch(built, family):
    """Left padding and (LLaVA-NeXT) different tile counts in one batch change nothing: the first
    three steps' logits of each question in a batch of 3 equal those of the question alone (KOSMOS-2
    needs svrd.baselines.kosmos2's decoding-position fix for that; without it they differ)."""
    from svrd.infer.encoding import encode_batch, examples_from_rows
    from svrd.models import load_model, load_processor

    folder = str(built[family]["plain"])
    model, processor = kosmos2.adapt(load_model(folder).eval(), load_processor(folder))
    examples = examples_from_rows(_records()[:3])  # three tile grids; prompt lengths differ (hint or not)

    def logits(batch):
        enc = encode_batch(processor, batch)
        out = model.generate(**enc, max_new_tokens=3, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=processor.tokenizer.pad_token_id)
        return torch.stack(out.scores, 1), enc["attention_mask"]

    together, mask = logits(examples)
    assert (mask == 0).any()  # some rows are padded
    for i, example in enumerate(examples):
        alone, _ = logits([example])
        assert torch.allclose(together[i], alone[0], atol=1e-4), f"{family} row {i}"


# ---------------------------------------------------------------- through the infer and score stages


def _write_split(root: Path, rows: list[dict]) -> None:
    split = root / "data" / "split"
    split.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), split / "test.parquet")
    others = [{**r, "pid": f"{s}{r['pid']}", "split": s} for s in ("train", "val") for r in fake_records(2)]
    for s in ("train", "val"):
        pq.write_table(pa.Table.from_pylist([r for r in others if r["split"] == s]), split / f"{s}.parquet")


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_baseline_runs_through_the_infer_stage_and_is_scored(built, family, tmp_path, monkeypatch):
    from svrd.answers import extract_choice
    from svrd.evaluate import score_models
    from svrd.infer.run import run_inference
    from svrd.infer.schema import PREDICTION_SCHEMA
    from svrd.io import read_rows, write_json, write_table
    from svrd.params import load_params
    from svrd.stage import INFER_DIR, METRICS, SPLIT_DIR

    says = BUILDERS[family][1]
    rows = _records()
    folder = str(built[family]["scripted"])
    params = load_params(REPO / "params.yaml").with_overrides({
        "infer.models": {family: {"path": folder, "dep": folder}},
        "infer.batch_size": 4, "infer.max_new_tokens": 24, "infer.mode": "generate", "infer.engine": "hf"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SVRD_CACHE_DIR", str(tmp_path / "cache"))
    _write_split(tmp_path, rows)
    # What stages/infer.py does.
    preds, stats = run_inference(params, family, read_rows(SPLIT_DIR / "test.parquet"))
    write_table(INFER_DIR / family / "predictions.parquet", preds, PREDICTION_SCHEMA)
    write_json(METRICS / "infer" / f"{family}.json", stats)

    expected_raw = strip_grounding(says)  # LLaVA-NeXT's has no markup: unchanged
    assert [p["raw"] for p in preds] == [expected_raw] * len(rows)
    assert [p["choice"] for p in preds] == [1] * len(rows)  # (B)
    if family == "kosmos2":
        assert extract_choice(says, rows[0]["choices"]) is None  # the markup had to go
        assert stats["image_tokens"] == 64
    else:
        assert stats["image_tokens"] == 2340
    assert stats["unparseable"] == 0 and stats["questions"] == len(rows)

    # What stages/score.py does.
    lines = score_models([family])
    scores = json.loads((tmp_path / "metrics" / "scores.json").read_text())[family]
    gold = sum(r["answer"] == 1 for r in rows)
    assert 0 < gold < len(rows)
    assert scores["all"]["correct"] == gold and scores["all"]["total"] == len(rows)
    assert scores["all"]["acc"] == round(100 * gold / len(rows), 2)
    assert scores["IMG"]["total"] == len(rows) and scores["unparseable"] == 0
    assert lines == [f"score {family}: {100 * gold / len(rows):.2f}% of {len(rows)} (0 unparseable)"]
    assert family in (tmp_path / "metrics" / "report.md").read_text()
    assert not os.listdir(tmp_path / "cache" / "infer")  # the partial log is gone once finished
