"""How well could the tiny student reason if it read every image perfectly? A fresh text model of
the student's shape (tiny.*) is trained on the distill examples with the image tokens dropped, then
given each held-out question's prompt and the teacher's summary and caption (the gold caption),
and it writes the reasoning and conclusion greedily. Its accuracy per topic is the text side's
ceiling at this budget; the init scale (--init) decides it (README, "The embedded sample").

    python scripts/text_only_ceiling.py                 # tiny.init_std, 528 steps, 100 val questions
    python scripts/text_only_ceiling.py --init 0.02     # transformers' default init: about chance
    python scripts/text_only_ceiling.py --steps 1056 --val 150 --heads 8   # 8 attention heads, not tiny.heads

Reads data/tiny_student (its tokenizer), data/split/*.parquet and data/teach/rationales.parquet;
about 2.5 min on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import random
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, get_linear_schedule_with_warmup

from svrd.answers import extract_choice
from svrd.examples import build_examples, encode_training, tokenizer_of
from svrd.io import read_rows
from svrd.models import load_processor
from svrd.params import load_params


def encoded(processor, split: str, rationales: dict, conclusion: str, image_token: int) -> list:
    rows = read_rows(f"data/split/{split}.parquet")
    out = []
    for example, row in zip(build_examples(rows, rationales, "rationale", conclusion), rows, strict=True):
        enc = encode_training(processor, example, None)
        text = enc["input_ids"] != image_token
        out.append((enc["input_ids"][text], enc["labels"][text], row))
    return out


def main() -> None:
    params = load_params()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", type=float, default=params.tiny.init_std, help="initial weight std")
    ap.add_argument("--steps", type=int, default=528)
    ap.add_argument("--lr", type=float, default=params.train.lr)
    ap.add_argument("--batch", type=int, default=params.train.batch_size)
    ap.add_argument("--val", type=int, default=100, help="held-out (val) questions answered")
    ap.add_argument("--heads", type=int, default=params.tiny.heads, help="attention heads (tiny.heads)")
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = random.Random(0)

    processor = load_processor("data/tiny_student")
    tok = tokenizer_of(processor)
    image_token = tok.convert_tokens_to_ids("<image>")
    rationales = {r["pid"]: r for r in read_rows("data/teach/rationales.parquet")}
    train_set = encoded(processor, "train", rationales, params.train.conclusion, image_token)
    val_set = encoded(processor, "val", rationales, params.train.conclusion, image_token)[: args.val]
    t = params.tiny
    config = LlamaConfig(vocab_size=len(tok), hidden_size=t.text_width, intermediate_size=4 * t.text_width,
                         num_hidden_layers=t.text_layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
                         max_position_embeddings=1024, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
                         initializer_range=args.init)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(opt, params.train.warmup_steps, args.steps)

    start, order = time.time(), []
    model.train()
    for step in range(1, args.steps + 1):
        if len(order) < args.batch:
            order += rng.sample(range(len(train_set)), len(train_set))
        batch = [train_set[order.pop()] for _ in range(args.batch)]
        width = max(len(ids) for ids, _, _ in batch)
        ids = torch.full((args.batch, width), tok.pad_token_id)
        labels = torch.full((args.batch, width), -100)
        mask = torch.zeros(args.batch, width, dtype=torch.long)
        for i, (x, y, _) in enumerate(batch):
            ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = x, y, 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)

    model.eval()
    end_caption = tok.convert_tokens_to_ids(tok.tokenize("</CAPTION>"))
    right = collections.defaultdict(list)
    for ids, _, row in val_set:
        seq = ids.tolist()
        cut = max(i for i in range(len(seq)) if seq[i : i + len(end_caption)] == end_caption) + len(end_caption)
        with torch.no_grad():
            out = model.generate(ids[None, :cut], max_new_tokens=80, do_sample=False, pad_token_id=tok.pad_token_id)
        # read as the score stage reads a written conclusion (any train.conclusion style)
        right[row["topic"]].append(extract_choice(tok.decode(out[0, cut:]), list(row["choices"])) == row["answer"])
    per_topic = ", ".join(f"{k} {100 * sum(v) / len(v):.0f}%" for k, v in sorted(right.items()))
    overall = 100 * sum(sum(v) for v in right.values()) / len(val_set)
    print(f"init {args.init}, {args.heads} heads: {overall:.1f}% of {len(val_set)} given the gold caption ({per_topic}); "
          f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
