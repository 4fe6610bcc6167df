"""Build the embedded tiny student (tokenizer trained on the training text, LLaVA from a config).

    python stages/tiny_student.py
"""

from svrd.io import read_rows
from svrd.params import load_params
from svrd.prompts import format_question
from svrd.stage import SPLIT_DIR, TINY_STUDENT, run
from svrd.tiny import build_tiny_student

TEXT_FIELDS = ("lecture", "solution", "caption", "hint")


def training_text(rows):
    # Only train and val text: the test questions stay unseen, even by the tokenizer.
    for row in rows:
        yield format_question(row)
        yield from (row[f] for f in TEXT_FIELDS if row[f])


def main() -> None:
    p = load_params().tiny
    columns = ["question", "choices", "hint", *TEXT_FIELDS[:3]]
    rows = read_rows(SPLIT_DIR / "train.parquet", columns) + read_rows(SPLIT_DIR / "val.parquet", columns)
    info = build_tiny_student(TINY_STUDENT, training_text(rows), vocab_size=p.vocab_size, image_size=p.image_size,
                              patch_size=p.patch_size, vision_width=p.vision_width, vision_layers=p.vision_layers,
                              text_width=p.text_width, text_layers=p.text_layers, heads=p.heads, seed=p.seed)
    print(f"tiny_student: {info['parameters'] / 1e6:.2f}M parameters, vocabulary {info['vocab']}, "
          f"{info['image_tokens']} image tokens -> {TINY_STUDENT}")


if __name__ == "__main__":
    run(main)
