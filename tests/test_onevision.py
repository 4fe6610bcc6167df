"""student.image_tokens on LLaVA-OneVision (llava-hf/llava-onevision-qwen2-0.5b-ov-hf's image path, narrow
random layers, built offline like tests/real_students.py).

OneVision's count for one image (LlavaOnevisionProcessor, the published formula): a base view of the
whole image at 384 px (27 x 27 = 729 SigLIP tokens), plus the tile grid that select_best_resolution
picks among image_grid_pinpoints, its 27-per-tile feature map unpadded to the image's aspect, plus one
newline token per feature row; past a ratio of 1.1 over 9 tiles' worth (anyres_max_9) the grid's
features are pooled down. The budget keeps the grids whose most tokens fit. Expected counts are worked
out by hand below, not by the code under test.

transformers 5.23 will not construct or load a LlavaOnevisionProcessor without torchvision (its video
processor needs it), and this project does not install torchvision: the tests build the processor
without a video processor (OfflineOnevisionProcessor); images take the same path.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_models import corpus, fake_rationales, fake_records

from svrd.examples import Collator, build_examples, encode_training, tokenizer_of
from svrd.images import png_bytes
from svrd.models import REALISTIC_IMAGE, apply_image_tokens, count_image_tokens, load_model
from svrd.tiny import CHAT_TEMPLATE, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# llava-hf/llava-onevision-qwen2-0.5b-ov-hf
ONEVISION_05B = {
    "image_size": 384,  # config.json vision_config.image_size (SigLIP so400m/14 at 384); preprocessor size 384x384
    "patch_size": 14,  # config.json vision_config.patch_size
    "num_image_tokens": 729,  # processor_config.json: (384 // 14)^2
    "vision_aspect_ratio": "anyres_max_9",  # config.json and processor_config.json
    "vision_feature_select_strategy": "full",  # config.json and processor_config.json (no CLS to drop)
    "vision_feature_layer": -1,  # config.json
    # config.json and preprocessor_config.json image_grid_pinpoints: every grid of 1..6 x 1..6 tiles of 384
    "image_grid_pinpoints": [[384 * r, 384 * c] for r in range(1, 7) for c in range(1, 7)],
    "mean_std": [0.5, 0.5, 0.5],  # preprocessor_config.json
    "resample": 3,  # preprocessor_config.json (bicubic)
    "max_position_embeddings": 32768,  # config.json text_config (Qwen2-0.5B)
}
NARROW = {"vision_width": 32, "text_width": 64, "heads": 2}

# 640x480 (h 480, w 640), tokens by hand (h x w grid of tiles; 27 features per tile side):
# - all 36 grids (native): select_best_resolution picks 768x768 (2x2: the smallest with the whole 640x480
#   resolution), 54 x 54 features; the image is wider (4:3 > 1:1): rows = int(480 * 54 / 640) = 40 (40.5
#   rounds down in int), padding (54 - 40) // 2 = 7 each side -> 40 rows x 54 = 2160, + 40 newlines;
#   sqrt(2160 / (9 * 729)) < 1.1: no pooling. 729 + 2160 + 40 = 2929.
NATIVE = 729 + 40 * 54 + 40
# - budget 729 (the paper's): no grid fits (the smallest, 1x1, can give 729 + 729 + 27 = 1485), so the 1x1 grid
#   alone: 27 x 27 features, rows = int(480 * 27 / 640) = int(20.25) = 20, padding (27 - 20) // 2 = 3 ->
#   21 rows x 27 = 567, + 21 newlines: 729 + 567 + 21 = 1317.
BUDGET_729 = 729 + 21 * 27 + 21
# - budget 3000: grid bounds 729 + 729*r*c + 27*r: 1x1 1485, 1x2 2214, 2x1 2241, 1x3 2943, 3x1 2997 fit;
#   2x2 3699, 1x4 3672 do not. Among the five, 384x768 (1x2) keeps the most resolution (scale 0.8, as 384x1152
#   but less waste): 27 x 54 features; the image is narrower (4:3 < 2:1): cols = int(640 * 27 / 480) = 36,
#   padding (54 - 36) // 2 = 9 -> 27 x 36 = 972, + 27 newlines: 729 + 972 + 27 = 1728.
BUDGET_3000 = 729 + 27 * 36 + 27
# - budget 8829 and above: every grid fits (6x6: 729 + min(36 * 729, int(1.21 * 9 * 729) = 7938) + 162 = 8829).
ALL_FIT = 729 + int(1.21 * 9 * 729) + 6 * 27


def onevision_processor(tokenizer):
    """The published processor settings, a fresh one each call (apply_image_tokens changes it)."""
    from transformers import LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    class OfflineOnevisionProcessor(LlavaOnevisionProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:  # needs torchvision; no videos here
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    cfg = ONEVISION_05B
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": cfg["image_size"], "width": cfg["image_size"]}, image_grid_pinpoints=cfg["image_grid_pinpoints"],
        image_mean=cfg["mean_std"], image_std=cfg["mean_std"], resample=cfg["resample"])
    return OfflineOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
        num_image_tokens=cfg["num_image_tokens"], vision_feature_select_strategy=cfg["vision_feature_select_strategy"],
        vision_aspect_ratio=cfg["vision_aspect_ratio"], chat_template=CHAT_TEMPLATE)


def build_onevision(out_dir, tokenizer, seed: int = 0) -> str:
    """A narrow random LLaVA-OneVision (SigLIP at 384/14, Qwen2 text) saved to `out_dir`."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.qwen2.configuration_qwen2 import Qwen2Config
    from transformers.models.siglip.configuration_siglip import SiglipVisionConfig

    cfg = ONEVISION_05B
    vision = SiglipVisionConfig(hidden_size=NARROW["vision_width"], intermediate_size=NARROW["vision_width"] * 2,
                                num_hidden_layers=1, num_attention_heads=2, image_size=cfg["image_size"],
                                patch_size=cfg["patch_size"])
    width = NARROW["text_width"]
    text = Qwen2Config(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=width * 2, num_hidden_layers=2,
                       num_attention_heads=NARROW["heads"], num_key_value_heads=NARROW["heads"],
                       max_position_embeddings=cfg["max_position_embeddings"], pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       tie_word_embeddings=False)
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy=cfg["vision_feature_select_strategy"],
        vision_feature_layer=cfg["vision_feature_layer"], vision_aspect_ratio=cfg["vision_aspect_ratio"],
        image_grid_pinpoints=cfg["image_grid_pinpoints"])
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="module")
def onevision(tmp_path_factory):
    """(model folder, a processor factory, examples with 640x480 images)."""
    records = fake_records(2)
    for r in records:
        r["image"] = png_bytes(Image.new("RGB", REALISTIC_IMAGE, (40, 120, 200)))
    tokenizer = train_tokenizer(corpus(records), 400)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<video>"]})
    path = build_onevision(tmp_path_factory.mktemp("onevision") / "student", tokenizer)
    examples = build_examples(records, fake_rationales(records), "rationale", "letter")
    return path, lambda: onevision_processor(tokenizer), examples


def run_step(model, processor, examples) -> torch.Tensor:
    """A training forward on 640x480 images: the model raises if its features and the prompt's image
    tokens disagree, so a finite loss means processor and model config agree."""
    batch = Collator(tokenizer_of(processor).pad_token_id)([encode_training(processor, e, None) for e in examples])
    return model(**batch).loss


def test_onevision_native_count_is_the_published_formula(onevision):
    path, new_processor, examples = onevision
    model, processor = load_model(path), new_processor()
    info = apply_image_tokens(model, processor, None)
    assert info == {"family": "llava_onevision", "image_tokens": NATIVE, "requested": None, "applied": False,
                    "how": "native processing"}
    assert len(model.config.image_grid_pinpoints) == 36
    assert torch.isfinite(run_step(model, processor, examples))  # processor and model agree on 2929


@pytest.mark.parametrize(("budget", "expected", "grids", "most"), [
    (729, BUDGET_729, 1, 1485), (3000, BUDGET_3000, 5, 2997), (4000, NATIVE, 8, 3753), (ALL_FIT, NATIVE, 36, ALL_FIT),
])
def test_onevision_budget_caps_the_tile_grids(onevision, budget, expected, grids, most):
    """The budget keeps the grids whose most tokens fit, in the processor and the model config alike;
    tiles stay 384 px. 4000 adds 2x2 (3699), 1x4 (3672), 4x1 (3753): a 4:3 image's 2x2 is back, 2929."""
    path, new_processor, examples = onevision
    model, processor = load_model(path), new_processor()
    info = apply_image_tokens(model, processor, budget)
    assert info["image_tokens"] == expected and info["applied"] and info["requested"] == budget
    assert info["how"].startswith(f"{grids} of 36 tile grids of 384px kept") and f"at most {most} tokens" in info["how"]
    assert ("minimum" in info["how"]) == (budget < 1485)
    assert processor.image_processor.image_grid_pinpoints == model.config.image_grid_pinpoints
    assert len(model.config.image_grid_pinpoints) == grids
    pixels = processor(images=[Image.new("RGB", REALISTIC_IMAGE)], text=["<image>"], return_tensors="pt")
    assert pixels["pixel_values"].shape[-2:] == (384, 384)  # never a tile above the encoder's native size
    if budget in (729, 3000):  # the model runs on the kept grids
        assert torch.isfinite(run_step(model, processor, examples))


def test_onevision_budget_is_saved_with_the_student(onevision, tmp_path):
    """What distill saves (model config + image processor) keeps the grids, so infer counts the same tokens."""
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    path, new_processor, _ = onevision
    model, processor = load_model(path), new_processor()
    apply_image_tokens(model, processor, 729)
    model.save_pretrained(tmp_path / "saved")
    processor.image_processor.save_pretrained(tmp_path / "saved")
    assert load_model(str(tmp_path / "saved")).config.image_grid_pinpoints == [[384, 384]]
    reloaded = new_processor()
    reloaded.image_processor = LlavaOnevisionImageProcessorPil.from_pretrained(tmp_path / "saved")
    assert reloaded.image_processor.image_grid_pinpoints == [[384, 384]]
    assert count_image_tokens(reloaded) == BUDGET_729
