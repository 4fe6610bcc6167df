"""Log-probabilities of given continuations after a prompt batch (likelihood answering, the stage
beam's likelihood judge), with position ids built the way `generate` builds them."""

from __future__ import annotations

import torch

from svrd.examples import tokenizer_of


def position_ids(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, extra: dict) -> torch.Tensor | None:
    """Position ids as `generate` builds them (from the attention mask, so left padding does not
    shift positions; families with their own scheme, e.g. multimodal RoPE, override the method)."""
    import inspect

    if "position_ids" not in inspect.signature(model.forward).parameters:
        return None
    prepare = getattr(model, "_prepare_position_ids_for_generation", None)
    if prepare is not None:
        try:
            return prepare(input_ids, {"input_ids": input_ids, "attention_mask": attention_mask, **extra})
        except Exception:  # noqa: BLE001 - an unexpected override: fall back to the plain rule
            pass
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.inference_mode()
def score_continuations(model, processor, inputs: dict, prefixes: list[list[int]],
                        continuations: list[list[list[int]]]) -> list[list[float]]:
    """Sum of log-probabilities of each row's continuations after its prompt and prefix.

    `inputs` is the encoded (left-padded) prompt batch; round j scores every row's j-th
    continuation in one forward pass over the same rows (so image tensors are reused as they
    are), re-padded on the left; rows with fewer continuations repeat their first one, unscored.
    """
    tok = tokenizer_of(processor)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
    scores: list[list[float]] = [[] for _ in prompts]
    for j in range(max(len(c) for c in continuations)):
        conts = [c[j] if j < len(c) else c[0] for c in continuations]
        seqs = [p + q + c for p, q, c in zip(prompts, prefixes, conts, strict=True)]
        longest = max(len(s) for s in seqs)
        batch_ids = torch.full((len(seqs), longest), pad, dtype=torch.long)
        batch_mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for i, s in enumerate(seqs):
            batch_ids[i, longest - len(s):] = torch.tensor(s, dtype=torch.long)
            batch_mask[i, longest - len(s):] = 1
        batch_ids, batch_mask = batch_ids.to(model.device), batch_mask.to(model.device)
        keep = max(len(c) for c in conts) + 1  # logits only where continuation tokens are predicted
        kwargs = dict(extra)
        positions = position_ids(model, batch_ids, batch_mask, extra)
        if positions is not None:
            kwargs["position_ids"] = positions
        out = model(input_ids=batch_ids, attention_mask=batch_mask, logits_to_keep=keep, use_cache=False, **kwargs)
        logprobs = torch.log_softmax(out.logits.float(), dim=-1)  # [rows, keep, vocab]
        for i, c in enumerate(conts):
            if j >= len(continuations[i]):
                continue
            n = len(c)
            # Token c[t] sits at sequence position longest-n+t and is predicted at position longest-n+t-1,
            # which is index keep-n-1+t among the kept logits.
            steps = logprobs[i, keep - n - 1:keep - 1]
            scores[i].append(float(steps.gather(-1, torch.tensor(c, device=steps.device)[:, None]).sum()))
    return scores
