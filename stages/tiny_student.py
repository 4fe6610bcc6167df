"""Build the embedded tiny student, then pre-train it on the training images' captions.

The tokenizer is trained on the training text, the LLaVA-style model made from a config; then an
alignment stage (image -> caption, tiny.pretrain) gives it what the paper's student had before
distillation: it can see and describe an image, and was never taught a question.

    python stages/tiny_student.py
"""

import shutil

import _project  # noqa: F401  (first: this project's svrd, not another clone's)

from dvclive import Live
from svrd.distill import run_fingerprint
from svrd.io import read_rows, write_json
from svrd.params import load_params
from svrd.stage import LIVE_TINY, METRICS, SPLIT_DIR, TINY_STUDENT, cache_dir, run
from svrd.tiny import TEXT_FIELDS, build_tiny_student, caption_examples, pretrain_captions, training_text


def main() -> None:
    p = load_params().tiny
    columns = ["pid", "question", "choices", "hint", "image", *TEXT_FIELDS[:3]]
    train_rows = read_rows(SPLIT_DIR / "train.parquet", columns)
    val_rows = read_rows(SPLIT_DIR / "val.parquet", columns)
    shape = p.model_dump(exclude={"pretrain"})
    info = build_tiny_student(TINY_STUDENT, training_text(train_rows + val_rows), **shape)
    summary = {**info, "pretrain": p.pretrain.data}
    if p.pretrain.data == "caption":
        train_examples = caption_examples(train_rows, p.pretrain.prompt)
        val_examples = caption_examples(val_rows, p.pretrain.prompt)
        checkpoints = cache_dir() / "tiny_student" / run_fingerprint(str(info), p.model_dump(), train_examples)
        with Live(str(LIVE_TINY), save_dvc_exp=False, dvcyaml=None) as live:
            stats = pretrain_captions(TINY_STUDENT, train_examples, val_examples, p.pretrain, p.seed, checkpoints, live)
        shutil.rmtree(checkpoints, ignore_errors=True)
        summary.update({f"pretrain_{k}": stats[k] for k in ("steps", "train_loss", "val_loss", "wall_s", "mixed_precision") if k in stats})
        summary["pretrain_images"] = len(train_examples)
    write_json(METRICS / "tiny_student.json", summary)
    print(f"tiny_student: {info['parameters'] / 1e6:.2f}M parameters, vocabulary {info['vocab']}, "
          f"{info['image_tokens']} image tokens"
          + (f"; captions of {summary['pretrain_images']} training images, {summary['pretrain_steps']} steps, "
             f"val loss {summary.get('pretrain_val_loss')}, {summary['pretrain_wall_s']} s"
             if p.pretrain.data == "caption" else "; not pre-trained (tiny.pretrain.data: none)")
          + f" -> {TINY_STUDENT}")


if __name__ == "__main__":
    run(main)
