"""Sampled chains: `k` per question in one `generate()` call, seeded per batch (self-consistency
answering, and the prefer stage's chains)."""

from __future__ import annotations

import hashlib

import torch

from svrd.examples import Example, tokenizer_of
from svrd.infer.encoding import encode_batch, to_device
from svrd.infer.generation import eos_ids


def batch_seed(seed: int, pids: list[str]) -> int:
    """A stable seed per batch (not Python's salted hash)."""
    digest = hashlib.sha256(f"{seed}:{','.join(pids)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63)


@torch.inference_mode()
def sample_batch(model, processor, examples: list[Example], k: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int = 0, min_new_tokens: int = 0) -> list[list[dict]]:
    """`k` sampled chains for each example, in one `generate()` call (num_return_sequences=k).

    Each chain: {"text": the decoded new tokens (special tokens removed), "new_tokens": count,
    "finished": whether it ended with EOS rather than at `max_new_tokens`}.
    """
    tok = tokenizer_of(processor)
    inputs = to_device(model, encode_batch(processor, examples))
    torch.manual_seed(batch_seed(seed, [ex.pid for ex in examples]))
    extra = {"min_new_tokens": min_new_tokens} if min_new_tokens else {}
    eos = eos_ids(model, tok)
    out = model.generate(
        **inputs, do_sample=True, temperature=temperature, top_p=top_p, top_k=0, num_return_sequences=k,
        max_new_tokens=max_new_tokens, num_beams=1, pad_token_id=tok.pad_token_id, eos_token_id=eos,
        **extra,
    )
    new = out[:, inputs["input_ids"].shape[1]:]
    stop = {*eos, *([tok.pad_token_id] if tok.pad_token_id is not None else [])}
    chains: list[list[dict]] = [[] for _ in examples]
    for row_index, row in enumerate(new.tolist()):
        ids, finished = row, False
        for j, token in enumerate(row):
            if token in stop:
                ids, finished = row[:j], True
                break
        chains[row_index // k].append(
            {"text": tok.decode(ids, skip_special_tokens=True), "new_tokens": len(ids), "finished": finished})
    return chains
