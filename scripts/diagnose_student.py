"""Where does a student lose the answer? Teacher-forced cost of each rationale stage, split into the
target tokens it could copy from its prompt and the rest, and how exactly it captions images.

    python scripts/diagnose_student.py data/distill/model            # val split, 60 questions
    python scripts/diagnose_student.py data/tiny_student --captions   # also the base's greedy captions

Per topic and stage it prints the summed negative log-likelihood (nats per question) of the target
tokens the model finds hard (> 0.1 nats), split by whether the token occurs in the prompt: a
student that copies pays almost nothing for a prompt token (the summary restates the question), and
a prompt token near ln(k) nats, k the values that slot takes, is one it guesses. --captions
generates each image's caption with the pre-training prompt (tiny.pretrain.prompt) and counts exact
matches and words right in place against the record's caption: what the student can read.
Reads data/split/<split>.parquet and data/teach/rationales.parquet; needs a finished `dvc repro`
of the stages before distill.
"""

from __future__ import annotations

import argparse
import collections

import torch

from svrd.examples import build_examples, encode_training, tokenizer_of
from svrd.infer.generation import generate_batch
from svrd.io import read_rows
from svrd.models import load_model, load_processor
from svrd.params import load_params
from svrd.tiny import caption_examples

STAGES = ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION")
HARD = 0.1  # nats: a token below this is one the student has learnt


def stage_costs(model, processor, rows: list[dict], rationales: dict, conclusion: str) -> dict:
    """(topic, stage, 'prompt'|'other') -> [hard tokens, their summed nll] over `rows`."""
    tok = tokenizer_of(processor)
    topic = {r["pid"]: r["topic"] for r in rows}
    costs = collections.defaultdict(lambda: [0, 0.0])
    for ex in build_examples(rows, rationales, "rationale", conclusion):
        enc = encode_training(processor, ex, None)
        inputs = {k: (v if k == "pixel_values" else v.unsqueeze(0)) for k, v in enc.items()
                  if k in ("input_ids", "pixel_values")}
        with torch.no_grad():
            logits = model(**inputs).logits[0, :-1].float()
        targets = enc["labels"][1:]
        where = (targets != -100).nonzero().flatten()
        nll = -torch.log_softmax(logits, -1)[where, targets[where]]
        prompt_ids = set(enc["input_ids"][: int(where[0]) + 1].tolist())
        stage, text = "", ""
        for tid, cost in zip(targets[where].tolist(), nll.tolist(), strict=True):
            text += tok.decode([tid])
            stage = next((s for s in STAGES if text.endswith(f"<{s}>")), stage)
            if cost > HARD:
                cell = costs[(topic[ex.pid], stage, "prompt" if tid in prompt_ids else "other")]
                cell[0] += 1
                cell[1] += cost
    return costs


def caption_accuracy(model, processor, rows: list[dict], prompt: str, max_new_tokens: int = 96) -> dict:
    """topic -> (exact captions, words right in place, words) for greedy captions of `rows`' images."""
    examples = caption_examples(rows, prompt)
    topic = {r["pid"]: r["topic"] for r in rows}
    out = collections.defaultdict(lambda: [0, 0, 0])
    for i in range(0, len(examples), 32):
        batch = examples[i:i + 32]
        for ex, got in zip(batch, generate_batch(model, processor, batch, max_new_tokens)[0], strict=True):
            want = ex.target.split()
            cell = out[topic[ex.pid]]
            cell[0] += got.strip() == ex.target
            cell[1] += sum(a == b for a, b in zip(got.split(), want, strict=False))
            cell[2] += len(want)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a student folder (data/distill/model, data/tiny_student)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--per-topic", type=int, default=12, help="questions per topic")
    ap.add_argument("--captions", action="store_true", help="also greedy captions of the same images")
    args = ap.parse_args()
    params = load_params()
    model, processor = load_model(args.model).eval(), load_processor(args.model)
    by_topic = collections.defaultdict(list)
    for r in read_rows(f"data/split/{args.split}.parquet"):
        by_topic[r["topic"]].append(r)
    rows = [r for t in sorted(by_topic) for r in by_topic[t][: args.per_topic]]
    rationales = {r["pid"]: r for r in read_rows("data/teach/rationales.parquet")}
    costs = stage_costs(model, processor, rows, rationales, params.train.conclusion)
    print(f"hard target tokens (> {HARD} nats), nats per question, {args.per_topic} questions per topic")
    print(f"{'topic':14s} {'stage':11s} {'prompt':>7s} {'other':>7s}")
    for t in sorted(by_topic):
        n = min(len(by_topic[t]), args.per_topic)
        for s in STAGES:
            p, o = costs.get((t, s, "prompt"), [0, 0.0])[1], costs.get((t, s, "other"), [0, 0.0])[1]
            if p or o:
                print(f"{t:14s} {s:11s} {p / n:7.2f} {o / n:7.2f}")
    if args.captions:
        print(f"greedy captions ({params.tiny.pretrain.prompt!r}): exact, words right in place")
        for t, (exact, right, words) in sorted(caption_accuracy(model, processor, rows,
                                                                params.tiny.pretrain.prompt).items()):
            print(f"{t:14s} {exact:3d}/{min(len(by_topic[t]), args.per_topic):<3d} {right / max(words, 1):6.2f}")


if __name__ == "__main__":
    main()
