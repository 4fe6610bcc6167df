"""Examples to model inputs: the prompt batch every mode decodes from.

Prompts are rendered with the processor's chat template and left-padded, so the new tokens line
up at the right of a batch.
"""

from __future__ import annotations

from svrd.examples import Example, messages_for, tokenizer_of
from svrd.images import open_png


def encode_batch(processor, examples: list[Example]) -> dict:
    """Left-padded prompts for generation (the new tokens then line up at the right)."""
    tok = tokenizer_of(processor)
    tok.padding_side = "left"
    texts = [
        processor.apply_chat_template(messages_for(ex.prompt, ex.image is not None), add_generation_prompt=True,
                                      tokenize=False)
        for ex in examples
    ]
    images = [open_png(ex.image) for ex in examples if ex.image is not None]
    if images:
        return processor(images=images, text=texts, return_tensors="pt", padding=True)
    return processor(text=texts, return_tensors="pt", padding=True)



def to_device(model, inputs):
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


def prompt_length(processor, ex: Example) -> int:
    return len(tokenizer_of(processor)(ex.prompt)["input_ids"])



def examples_from_rows(rows: list[dict]) -> list[Example]:
    from svrd.prompts import format_question

    return [Example(r["pid"], r.get("image"), format_question(r)) for r in rows]
