"""Greedy decoding of an encoded prompt batch: each row's new tokens, and their text as the answer
readers see it."""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import DynamicLayer

from svrd.baselines import kosmos2
from svrd.examples import Example, tokenizer_of
from svrd.infer.encoding import encode_batch, to_device


def eos_ids(model, tok) -> list[int]:
    """The tokens that end a generation: the model's generation config's (a list where the model has
    several, e.g. Llama 3's <|eot_id|> and <|end_of_text|>); the tokenizer's EOS only when it names none."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is None:
        configured = tok.eos_token_id
    ids = configured if isinstance(configured, (list, tuple)) else [configured]
    return [int(i) for i in ids if i is not None]


def stop_ids(tok, eos: list[int] | None = None) -> set[int]:
    """Where a generated row ends: any of `eos` (eos_ids; default the tokenizer's EOS) or padding."""
    return {i for i in (*(eos if eos is not None else [tok.eos_token_id]), tok.pad_token_id) if i is not None}


def generated_ids(row: torch.Tensor, stop: set[int]) -> list[int]:
    """The tokens a sequence generated, up to (without) its first EOS or padding."""
    ids = row.tolist()
    for k, i in enumerate(ids):
        if i in stop:
            return ids[:k]
    return ids


@torch.inference_mode()
def generate_ids(model, processor, inputs: dict, max_new_tokens: int, min_new_tokens: int = 0,
                 prune: bool = True) -> list[list[int]]:
    """Greedy decoding of an encoded batch; each row's new tokens (EOS and padding removed).

    With `prune` (and a model `prunable` accepts) finished rows leave the batch as they end
    (`decode_pruned`), so the batch costs the sum of its answers' lengths rather than batch size x
    the longest; otherwise `model.generate` decodes the whole batch until its last row ends."""
    tok = tokenizer_of(processor)
    eos = eos_ids(model, tok)
    if prune and prunable(model, inputs):
        return decode_pruned(model, inputs, max_new_tokens, min_new_tokens, eos, stop_ids(tok, eos))
    extra = {"min_new_tokens": min_new_tokens} if min_new_tokens else {}
    out = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        pad_token_id=tok.pad_token_id, eos_token_id=eos, **extra,
    )
    new = out[:, inputs["input_ids"].shape[1]:]
    stop = stop_ids(tok, eos)
    return [generated_ids(row, stop) for row in new]


# Generation-config settings that add a logits processor to greedy decoding: decode_pruned applies
# none, so a model whose config sets one of them decodes through `generate`.
PROCESSOR_SETTINGS = ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
                      "encoder_no_repeat_ngram_size", "bad_words_ids", "sequence_bias", "suppress_tokens",
                      "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id", "min_length",
                      "min_new_tokens", "exponential_decay_length_penalty", "renormalize_logits", "watermarking_config",
                      "cache_implementation", "prefill_chunk_size", "stop_strings", "max_time")


def prunable(model, inputs: dict) -> bool:
    """Whether decode_pruned gives what `model.generate` gives: the stock generate loop (KOSMOS-2 and
    other families with their own `generate` keep it), a decoder-only model on the default dynamic
    cache, 2-D position ids (not multimodal RoPE), no extra logits processor in its config."""
    from transformers import GenerationConfig, GenerationMixin

    if getattr(type(model), "generate", None) is not GenerationMixin.generate:
        return False
    if model.config.is_encoder_decoder or not model._supports_default_dynamic_cache():
        return False
    if inputs.get("position_ids") is not None or inputs["input_ids"].dim() != 2:
        return False
    config, default = getattr(model, "generation_config", None) or GenerationConfig(), GenerationConfig()
    return all(getattr(config, k, None) == getattr(default, k, None) for k in PROCESSOR_SETTINGS)


def decode_pruned(model, inputs: dict, max_new_tokens: int, min_new_tokens: int, eos: list[int],
                  stop: set[int]) -> list[list[int]]:
    """Greedy decoding that drops each row from the batch (its KV-cache rows, mask and positions)
    once it writes a token of `stop` (EOS or padding, kept out of its output) or reaches
    `max_new_tokens`. The steps are `generate`'s own: the model's prepare_inputs_for_generation and
    _update_model_kwargs_for_generation, position ids from the attention mask, logits of the last
    position only, argmax; EOS is masked for the first `min_new_tokens` steps. Returns each row's tokens."""
    from transformers import DynamicCache

    input_ids = inputs["input_ids"]
    kwargs = {k: v for k, v in inputs.items() if k != "input_ids"}
    kwargs["use_cache"] = True
    if "position_ids" in inspect.signature(model.forward).parameters:
        kwargs["position_ids"] = model._prepare_position_ids_for_generation(input_ids, kwargs)
        if kwargs["position_ids"].dim() != 2:
            raise ValueError("decode_pruned needs 2-D position ids")
    if kwargs.get("attention_mask") is not None and bool((kwargs["attention_mask"] == 1).all()):
        kwargs["attention_mask"] = None  # as generate: no padding, no mask
    if model._supports_logits_to_keep():
        kwargs["logits_to_keep"] = 1
    kwargs["past_key_values"] = cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    capacity = input_ids.shape[1] + max_new_tokens
    cache.layers = [GrowingLayer(capacity) if type(layer) is DynamicLayer and not layer.is_initialized else layer
                    for layer in cache.layers]
    live = list(range(input_ids.shape[0]))  # each batch row's index in `inputs`
    found: list[list[int]] = [[] for _ in live]
    for step in range(max_new_tokens):
        model_inputs = model.prepare_inputs_for_generation(
            input_ids, next_sequence_length=None if step == 0 else 1, is_first_iteration=step == 0, **kwargs)
        outputs = model(**model_inputs, return_dict=True)
        kwargs = model._update_model_kwargs_for_generation(outputs, kwargs)
        logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)
        del outputs
        if step < min_new_tokens:
            logits[:, eos] = float("-inf")
        tokens = logits.argmax(-1)
        input_ids = torch.cat([input_ids, tokens[:, None]], dim=-1)
        keep = []
        for j, token in enumerate(tokens.tolist()):
            if token not in stop:
                found[live[j]].append(token)
                keep.append(j)
        if not keep or step + 1 == max_new_tokens:
            break
        if len(keep) < len(live):  # rows that ended leave the batch
            index = torch.tensor(keep, device=input_ids.device)
            input_ids = input_ids[index]
            kwargs["past_key_values"].batch_select_indices(index)
            for key in ("attention_mask", "position_ids", "token_type_ids", "mm_token_type_ids"):
                if isinstance(kwargs.get(key), torch.Tensor):
                    kwargs[key] = kwargs[key][index]
            live = [live[j] for j in keep]
    return found


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that keeps its keys and values in buffers with room for `capacity` tokens (doubled
    if ever outgrown): a new token is written in place, where DynamicLayer copies the whole cache
    (torch.cat) at every step, which was half of a decoding step's time for the tiny student at batch
    32 on CPU. The model reads a view of the filled part: the same values, so the same attention."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.buffers is None or end > self.buffers[0].shape[-2]:
            room = max(self.capacity, 2 * end)
            self.buffers = tuple(
                torch.cat([old[..., :self.length, :], old.new_empty((*old.shape[:2], room - self.length, old.shape[-1]))],
                          dim=-2) if old is not None else new.new_empty((*new.shape[:2], room, new.shape[-1]))
                for old, new in zip(self.buffers or (None, None), (key_states, value_states), strict=True))
        self.buffers[0][..., self.length:end, :] = key_states
        self.buffers[1][..., self.length:end, :] = value_states
        self.length = end
        self.keys, self.values = (b[..., :end, :] for b in self.buffers)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.buffers is not None:
            self.buffers = tuple(b[indices, ...] for b in self.buffers)
            self.keys, self.values = (b[..., :self.length, :] for b in self.buffers)


def generate_batch(model, processor, examples: list[Example], max_new_tokens: int,
                   min_new_tokens: int = 0) -> tuple[list[str], list[int]]:
    """Greedy outputs (stripped text) and their lengths in new tokens."""
    ids = generate_ids(model, processor, to_device(model, encode_batch(processor, examples)), max_new_tokens,
                       min_new_tokens)
    return [answer_text(processor, i) for i in ids], [len(i) for i in ids]


def answer_text(processor, ids: list[int]) -> str:
    """Generated ids as extract_choice reads them: decoded without special tokens, KOSMOS-2's
    grounding markup stripped (svrd.baselines.kosmos2), ends stripped."""
    return kosmos2.clean_output(processor, tokenizer_of(processor).decode(ids, skip_special_tokens=True)).strip()
