"""KOSMOS-2 (microsoft/kosmos-2-patch14-224) as a generative baseline of the infer stage.

KOSMOS-2 has no chat template. Its processor puts the image itself in front of the text
(`<s><image>` + 64 latent-query placeholders + `</image>`), and the model card's grounded VQA
prompt is `<grounding> Question: ... Answer:`. svrd's prompt (svrd.prompts.format_question)
already starts with "Question:" and lists the context and lettered options, so the prompt is

    <grounding> Question: ...\\nContext: ...\\nOptions:\\n(A) ...\\nAnswer:

installed as the processor's chat template (`adapt`), so that every place that
renders a prompt through the processor (infer's batches, the image-token count) renders this one.

Under `<grounding>` the model links phrases of its answer to image regions with markup,
`<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>`; that markup
is taken out (`strip_grounding`) before svrd.answers.extract_choice reads the answer, and `raw`
holds the stripped text. Only KOSMOS-2's own tags and patch-index tokens are removed: the
processor's post_process_generation(cleanup_and_extract=True) removes every `<...>` span
(`re.sub("<.*?>", "")`), which would also eat svrd's stage tags and any "<" in an answer such as
"x < 5 and y > 3"; on KOSMOS-2's own markup the two agree (tests/test_baselines.py).
"""

from __future__ import annotations

import re

# The processor's tag tokens (Kosmos2Processor.tag_tokens) and its 1,024 patch-index tokens.
TAGS = ("</doc>", "<image>", "</image>", "</chunk>", "</line>", "<phrase>", "</phrase>", "<object>", "</object>",
        "</delimiter_of_multi_objects/>", "<grounding>")
MARKUP = re.compile("|".join([re.escape(t) for t in TAGS] + [r"<patch_index_\d+>"]))

# trim_blocks (transformers renders templates with it) eats a newline written right after a block
# tag, hence the newline as an expression. No image placeholder: the processor adds the image.
PROMPT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}<grounding> "
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{{ '\\n' }}Answer:{% endif %}{% endfor %}"
)


MODES = ("generate", "self_consistency")  # infer.mode values KOSMOS-2 runs in


def is_kosmos2(processor) -> bool:
    return type(processor).__name__ == "Kosmos2Processor"


def adapt(model, processor, mode: str = "generate"):
    """(model, processor) ready for svrd's infer path; anything but KOSMOS-2 is returned as it is.

    - The processor gets the grounded question-answer prompt (PROMPT_TEMPLATE) unless it has a
      chat template of its own.
    - The model's decoding positions are corrected for left padding (`_unpad_decoding_positions`).
    - Its generation config (generation_config.json of the model folder, which svrd.infer.generation reads
      the EOS from) is the one that decodes: Kosmos2ForConditionalGeneration.generate hands over to
      its text model, whose own config, made from config.json, would otherwise silently win.
    - Only generate and self_consistency modes: likelihood and stage_beam re-pad the prompt with
      continuations, and KOSMOS-2's `image_embeds_position_mask` (which marks where the image goes
      in the prompt) would no longer line up; that is refused here rather than scored wrong.
    """
    if not is_kosmos2(processor):
        return model, processor
    from svrd.errors import SvrdError

    if mode not in MODES:
        raise SvrdError(f"infer.mode {mode!r} is not supported for KOSMOS-2: use one of {', '.join(MODES)}")
    if not getattr(processor, "chat_template", None):
        processor.chat_template = PROMPT_TEMPLATE
    _unpad_decoding_positions(model)
    text_model = getattr(model, "text_model", None)
    if text_model is not None and getattr(model, "generation_config", None) is not None:
        text_model.generation_config = model.generation_config
    return model, processor


def _unpad_decoding_positions(model) -> None:
    """KOSMOS-2's text positions (transformers 5.23, Kosmos2TextSinusoidalPositionalEmbedding) skip
    padding in the prompt (positions count non-pad tokens) but, once decoding from the cache, count
    from the cache length, which includes the left padding: a padded row's generated tokens jump
    ahead by its padding, so a question's answer depended on the lengths of its batch mates (the
    logits of the second generated token differed by 0.47 on the tiny model). A forward pre-hook on
    the position embedding counts each row's padding at the prompt step and takes it off the
    decoding positions. Calls that pass position_ids themselves are left alone."""
    embed = next((m for m in model.modules() if type(m).__name__ == "Kosmos2TextSinusoidalPositionalEmbedding"), None)
    if embed is None or getattr(embed, "_svrd_unpadded", False):
        return
    import torch

    def hook(module, args, kwargs):
        input_ids, past = kwargs.get("input_ids"), kwargs.get("past_key_values_length", 0)
        if input_ids is None or kwargs.get("position_ids") is not None or torch.is_tensor(past):
            return None
        if past == 0:  # the prompt: its left padding, per row
            module._svrd_padding = input_ids.eq(module.padding_idx).sum(dim=1, keepdim=True)
            return None
        padding = getattr(module, "_svrd_padding", None)
        if padding is None or padding.shape[0] != input_ids.shape[0]:
            return None
        positions = module.create_position_ids_from_input_ids(input_ids, module.padding_idx, past)
        real = input_ids.ne(module.padding_idx)  # rows already finished are fed padding: left as they are
        kwargs["position_ids"] = torch.where(real, positions - padding.to(positions.device), positions)
        return args, kwargs

    embed.register_forward_pre_hook(hook, with_kwargs=True)
    embed._svrd_unpadded = True


def strip_grounding(text: str) -> str:
    """The text without KOSMOS-2's grounding markup: tag tokens and patch-index tokens removed
    (an `<object>` block is nothing else, so it goes whole; a phrase keeps its words), ends stripped."""
    return MARKUP.sub("", text).strip()


def clean_output(processor, text: str) -> str:
    """A decoded generation as extract_choice should read it: grounding stripped for KOSMOS-2."""
    return strip_grounding(text) if is_kosmos2(processor) else text
