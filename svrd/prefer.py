"""prefer: DPO on the distilled student's own reasoning chains ("beyond SFT").

After distillation the student writes the four stages itself; where it is sometimes right and
sometimes wrong on a training question, its own chains tell which reasoning to prefer
(LLaVA-Reasoner: 32 samples per question, questions with 25-85% correct kept, at most 3
pairs each, DPO with beta 0.1). The steps:

1. `sample_chains`: `prefer.samples` chains per training question at `prefer.temperature`,
   batched (`prefer.batch_size` questions per `generate()` call, `num_return_sequences=k`).
   Each question's chains are appended to a JSONL log as its batch finishes, so a killed run
   resumes without re-sampling finished questions and gets the chains an uninterrupted run
   would (a batch the kill left half-written is sampled again whole); the log is keyed by a
   fingerprint of the model files and the sampling params, and kept: changing the band, m, beta
   or lr re-uses it.
2. `judge`: each chain's conclusion is read with `extract_choice` and compared with the gold
   answer; an unparseable chain (no conclusion, cut off, two options) counts as incorrect.
3. `make_pairs`: a question is kept when its share of correct chains lies in
   [`min_correct`, `max_correct`]; distinct correct chains are paired with distinct incorrect
   ones, at most `max_pairs` per question, spreading the pairs over as many chains as possible.
4. `train_dpo`: TRL's `DPOTrainer` (sigmoid loss, `beta`) over a vision dataset (images, prompt,
   chosen, rejected), the prompt being the student's own chat-templated prompt, tokenized to the
   very ids svrd.examples.encode_prompt and infer give (BOS included: PromptsAsEncoded); the
   reference model is a frozen copy of the distilled student and the policy's vision encoder is
   frozen. fp32 weights, prefer.precision as autocast (as distill).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import torch
from tqdm import tqdm

from svrd.answers import extract_choice
from svrd.examples import Example, messages_for, tokenizer_of
from svrd.images import open_png
from svrd.infer.encoding import examples_from_rows, prompt_length
from svrd.infer.resume import load_partial
from svrd.infer.sampling import sample_batch
from svrd.io import atomic_dir, write_table

log = logging.getLogger(__name__)

PAIR_SCHEMA = pa.schema(
    [
        ("pid", pa.string()),
        ("chosen", pa.string()),  # a chain whose conclusion is the gold answer
        ("rejected", pa.string()),  # a chain whose conclusion is another option, or none
        ("chosen_choice", pa.int64()),
        ("rejected_choice", pa.int64()),  # null: the chain committed to no option (unparseable)
    ]
)

# The sampling params a chains log depends on (batch_size is not one: each question's chains are
# valid whatever batch it was sampled in).
SAMPLING_KEYS = ("samples", "temperature", "top_p", "max_new_tokens", "seed", "precision")


# ------------------------------------------------------------------------------ sampling

def sample_chains(model, processor, examples: list[Example], k: int, temperature: float, top_p: float,
                  max_new_tokens: int, batch_size: int, seed: int = 0, done: dict[str, list[dict]] | None = None,
                  on_batch: Callable[[dict[str, list[dict]]], None] | None = None, progress: bool = True,
                  min_new_tokens: int = 0) -> dict[str, list[dict]]:
    """Chains for every example, pid -> list of `k` chains; `done` (from an interrupted run) is not redone and
    `on_batch` receives each finished batch's {pid: chains} (to persist them as they arrive)."""
    done = dict(done or {})
    todo = sorted((ex for ex in examples if ex.pid not in done), key=lambda ex: prompt_length(processor, ex))
    model.eval()
    with tqdm(total=len(examples), initial=len(examples) - len(todo), desc="prefer: sampling", unit="q",
              disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            chains = sample_batch(model, processor, batch, k, temperature, top_p, max_new_tokens, seed,
                                  min_new_tokens)
            finished = {ex.pid: c for ex, c in zip(batch, chains, strict=True)}
            done.update(finished)
            if on_batch is not None:
                on_batch(finished)
            bar.update(len(batch))
    return {ex.pid: done[ex.pid] for ex in examples}


def model_fingerprint(path: str | Path) -> str:
    """Content hash of a local model folder's files (a Hub id: its name)."""
    h = hashlib.sha256()
    root = Path(path)
    if not root.is_dir():
        h.update(str(path).encode())
        return h.hexdigest()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def sampling_fingerprint(model_path: str | Path, cfg) -> str:
    h = hashlib.sha256(model_fingerprint(model_path).encode())
    h.update(json.dumps({key: getattr(cfg, key) for key in SAMPLING_KEYS}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def load_chains(path: Path) -> dict[str, list[dict]]:
    """pid -> chains of a chains log. A last line cut by a kill is dropped and cut off the file, and
    so are the lines of a batch that the kill left incomplete (svrd.infer.resume.load_partial): a batch's
    chains are drawn together, seeded by its pids, so it is sampled again whole."""
    return {pid: row["chains"] for pid, row in load_partial(path).items()}


def chain_appender(path: Path):
    """An `on_batch` callback appending one line per question, flushed and fsynced; use as a context manager.

    Each line names its batch's pids: a batch larger than the write buffer goes out in several
    writes, and a kill between two of them leaves a part of the batch, which load_chains drops."""
    path.parent.mkdir(parents=True, exist_ok=True)

    class _Appender:
        def __enter__(self):
            self.fh = open(path, "a", encoding="utf-8")
            return self

        def __call__(self, finished: dict[str, list[dict]]) -> None:
            batch = list(finished)
            for pid, chains in finished.items():
                self.fh.write(json.dumps({"pid": pid, "chains": chains, "batch": batch}, ensure_ascii=False) + "\n")
            self.fh.flush()
            os.fsync(self.fh.fileno())

        def __exit__(self, *exc):
            self.fh.close()

    return _Appender()


# ------------------------------------------------------------------------------ judging and pairing

def judge(chains: list[dict], choices: list[str], answer: int) -> list[dict]:
    """Each chain with "choice" (extract_choice; None when unparseable) and "correct"."""
    judged = []
    for chain in chains:
        choice = extract_choice(chain["text"], choices)
        judged.append({**chain, "choice": choice, "correct": choice is not None and choice == answer})
    return judged


def correct_share(judged: list[dict]) -> float:
    return sum(c["correct"] for c in judged) / len(judged) if judged else 0.0


def in_band(judged: list[dict], min_correct: float, max_correct: float) -> bool:
    # A small tolerance: with k=20, 5/20 must count as 0.25 whatever the float rounding.
    share = correct_share(judged)
    return min_correct - 1e-9 <= share <= max_correct + 1e-9


def make_pairs(pid: str, judged: list[dict], max_pairs: int, seed: int = 0) -> list[dict]:
    """Up to `max_pairs` (chosen correct, rejected incorrect) pairs of one question's judged chains.

    Identical texts count once; pairs are drawn in a seeded order that uses every distinct chain
    before re-using one (3 correct and 3 incorrect chains give 3 disjoint pairs).
    """
    def distinct(chains):
        seen, out = set(), []
        for c in chains:
            if c["text"] not in seen:
                seen.add(c["text"])
                out.append(c)
        return out

    good = distinct([c for c in judged if c["correct"]])
    bad = distinct([c for c in judged if not c["correct"]])
    if not good or not bad:
        return []
    rng = random.Random(f"{seed}:{pid}")
    rng.shuffle(good)
    rng.shuffle(bad)
    uses_good, uses_bad = [0] * len(good), [0] * len(bad)
    remaining = [(i, j) for i in range(len(good)) for j in range(len(bad))]
    pairs = []
    while remaining and len(pairs) < max_pairs:
        i, j = min(remaining, key=lambda ij: (max(uses_good[ij[0]], uses_bad[ij[1]]),
                                              uses_good[ij[0]] + uses_bad[ij[1]]))
        remaining.remove((i, j))
        uses_good[i] += 1
        uses_bad[j] += 1
        pairs.append({"pid": pid, "chosen": good[i]["text"], "rejected": bad[j]["text"],
                      "chosen_choice": good[i]["choice"], "rejected_choice": bad[j]["choice"],
                      "chosen_finished": good[i].get("finished", True),
                      "rejected_finished": bad[j].get("finished", True)})
    return pairs


def select_pairs(judged_by_pid: dict[str, list[dict]], min_correct: float, max_correct: float, max_pairs: int,
                 seed: int = 0) -> tuple[list[dict], dict]:
    """Pairs of every question in the band, and the counts behind them."""
    pairs, kept = [], 0
    for pid, judged in judged_by_pid.items():
        if not in_band(judged, min_correct, max_correct):
            continue
        made = make_pairs(pid, judged, max_pairs, seed)
        if made:
            kept += 1
            pairs.extend(made)
    chains = [c for judged in judged_by_pid.values() for c in judged]
    counts = {
        "questions_sampled": len(judged_by_pid),
        "chains": len(chains),
        "correct_share": round(sum(c["correct"] for c in chains) / max(1, len(chains)), 4),
        "unparseable_share": round(sum(c["choice"] is None for c in chains) / max(1, len(chains)), 4),
        "questions_all_correct": sum(all(c["correct"] for c in j) for j in judged_by_pid.values()),
        "questions_none_correct": sum(not any(c["correct"] for c in j) for j in judged_by_pid.values()),
        "questions_kept": kept,
        "pairs": len(pairs),
    }
    return pairs, counts


# ------------------------------------------------------------------------------ DPO

def chat_prompt(processor, example: Example) -> str:
    """The prompt text exactly as svrd.examples.encode_prompt / svrd.infer.encoding.encode_batch build it."""
    return processor.apply_chat_template(messages_for(example.prompt, example.image is not None),
                                         add_generation_prompt=True, tokenize=False)


def dpo_dataset(processor, examples: dict[str, Example], pairs: list[dict]):
    """TRL's vision preference format: images, prompt, chosen, rejected (completions end with EOS
    when the sampled chain did)."""
    from datasets import Dataset

    eos = tokenizer_of(processor).eos_token or ""
    rows = []
    for pair in pairs:
        ex = examples[pair["pid"]]
        rows.append({
            "images": [open_png(ex.image)] if ex.image is not None else [],
            "prompt": chat_prompt(processor, ex),
            "chosen": pair["chosen"] + (eos if pair.get("chosen_finished", True) else ""),
            "rejected": pair["rejected"] + (eos if pair.get("rejected_finished", True) else ""),
        })
    return Dataset.from_list(rows)


def frozen_copy(model):
    """The reference model: a copy of the policy before training, in eval mode, no gradients."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


class PromptsAsEncoded:
    """The processor as TRL's vision DPO collator should see it: prompts tokenized with the processor's
    default special tokens, as distill (svrd.examples.encode_prompt) and infer (svrd.infer.encoding.encode_batch) encode them.

    TRL passes add_special_tokens=False to every processor call (it assumes the chat template wrote the
    BOS); for a tokenizer that adds one (Llama-based students) DPO would train on prompts without the BOS
    the model sees everywhere else. Completions keep add_special_tokens=False, as distill's targets do.
    TRL's prompt call is the one that carries `images` (completions are text only)."""

    def __init__(self, processor):
        self._processor = processor

    def __getattr__(self, name):
        return getattr(self._processor, name)

    def __call__(self, *args, **kwargs):
        if "images" in kwargs:
            kwargs.pop("add_special_tokens", None)
        return self._processor(*args, **kwargs)


def dpo_trainer(model, ref_model, processor, dataset, cfg, output_dir: str | Path):
    """TRL's DPOTrainer (sigmoid loss) over `model`: fp32 weights, prefer.precision as autocast."""
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from svrd.models import CpuFp16Trainer, mixed_precision, require_fp32_trainable

    class Trainer(CpuFp16Trainer, DPOTrainer):  # prefer.precision=fp16 on CPU: fp16 autocast + grad scaler
        pass

    require_fp32_trainable(model)
    compute = mixed_precision(cfg.precision, next(model.parameters()).device, "prefer.precision")
    args = DPOConfig(
        output_dir=str(output_dir),
        beta=cfg.beta,
        loss_type=["sigmoid"],
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.train_batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        max_length=cfg.max_length,
        gradient_checkpointing=False,  # TRL's default is on: slower, and pointless for a small student
        bf16=compute == "bf16",
        fp16=compute == "fp16",
        use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 on CPU unless told it is CPU training
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=processor)
    if not isinstance(trainer.data_collator, DataCollatorForVisionPreference):  # dpo_dataset always has images
        raise TypeError(f"expected TRL's vision preference collator, got {type(trainer.data_collator).__name__}")
    trainer.data_collator.processor = PromptsAsEncoded(processor)  # TRL's collator, prompts as distill encodes them
    return trainer


def train_dpo(model, ref_model, processor, dataset, cfg, output_dir: str | Path) -> dict:
    """DPO (sigmoid loss) in place on `model` with TRL's DPOTrainer; returns training stats."""
    trainer = dpo_trainer(model, ref_model, processor, dataset, cfg, output_dir)
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    # TRL logs the reward metrics every logging_steps and once more in the final summary entry.
    logged = [e for e in trainer.state.log_history if "rewards/accuracies" in e]
    last = logged[-1] if logged else {}
    stats = {
        "train_loss": round(float(result.training_loss), 4),
        "steps": int(result.global_step),
        "pairs": len(dataset),
        "wall_s": round(wall, 1),
        "mixed_precision": "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "no",  # over fp32 weights
    }
    for key in ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"):
        if key in last:
            stats[key.replace("/", "_")] = round(float(last[key]), 4)
    return stats


def save_model(model, processor, out_dir: str | Path) -> None:
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)  # safetensors
        processor.save_pretrained(tmp)


def copy_model(src: str | Path, out_dir: str | Path) -> None:
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


# ------------------------------------------------------------------------------ the stage

def run_prefer(params, train_rows: list[dict], model_path: str | Path, out_dir: str | Path,
               pairs_path: str | Path, work_dir: str | Path, progress: bool = True) -> dict:
    """Sample, judge, pair, train; write the model to `out_dir` and the pairs to `pairs_path`.

    `work_dir` holds the chains logs (one per sampling fingerprint). Returns the stage's metrics.
    """
    from svrd.models import (
        TRAIN_WEIGHTS_DTYPE,
        autocast,
        freeze,
        load_model,
        load_processor,
        mixed_precision,
        pick_device,
    )

    cfg = params.prefer
    trust = params.student.trust_remote_code
    rows = train_rows[: cfg.max_questions] if cfg.max_questions else list(train_rows)
    examples = examples_from_rows(rows)
    by_pid = {r["pid"]: r for r in rows}

    device = pick_device()
    mixed_precision(cfg.precision, device, "prefer.precision")  # refused before hours of sampling, not after
    model = load_model(str(model_path), trust, TRAIN_WEIGHTS_DTYPE)  # DPO trains it: fp32 weights, see dpo_trainer
    if hasattr(model, "merge_and_unload"):  # a LoRA adapter folder (train.lora.merge false): train the merged model
        log.info("%s is a LoRA adapter: merged into its base for DPO", model_path)
        model = model.merge_and_unload()
    model = model.to(device)
    processor = load_processor(str(model_path), trust)

    fingerprint = sampling_fingerprint(model_path, cfg)
    chains_log = Path(work_dir) / fingerprint / "chains.jsonl"
    done = load_chains(chains_log)
    resumed = sum(ex.pid in done for ex in examples)
    t0 = time.perf_counter()
    with chain_appender(chains_log) as persist, autocast(cfg.precision, device):  # sampled in the compute dtype
        chains = sample_chains(model, processor, examples, cfg.samples, cfg.temperature, cfg.top_p,
                               cfg.max_new_tokens, cfg.batch_size, cfg.seed, done=done, on_batch=persist,
                               progress=progress)
    sampling_wall = time.perf_counter() - t0
    fresh = len(examples) - resumed

    judged = {pid: judge(c, by_pid[pid]["choices"], by_pid[pid]["answer"]) for pid, c in chains.items()}
    pairs, stats = select_pairs(judged, cfg.min_correct, cfg.max_correct, cfg.max_pairs, cfg.seed)
    stats.update(resumed=resumed, sampling_wall_s=round(sampling_wall, 2),
                 chains_per_s=round(fresh * cfg.samples / sampling_wall, 2) if fresh and sampling_wall else None,
                 samples=cfg.samples, temperature=cfg.temperature, band=[cfg.min_correct, cfg.max_correct],
                 max_pairs=cfg.max_pairs, chains_log=str(chains_log))
    write_table(pairs_path, [{k: p[k] for k in PAIR_SCHEMA.names} for p in pairs], PAIR_SCHEMA)

    if not pairs:
        del model
        copy_model(model_path, out_dir)
        stats.update(trained=False, dpo=None,
                     note="no question had both correct and incorrect chains within the band: "
                          "the distilled model was copied unchanged")
        return stats

    ref_model = frozen_copy(model)
    counts = freeze(model, vision=True, projector_too=params.student.freeze_projector)
    dataset = dpo_dataset(processor, {ex.pid: ex for ex in examples}, pairs)
    dpo_stats = train_dpo(model, ref_model, processor, dataset, cfg, Path(work_dir) / fingerprint / "dpo")
    save_model(model, processor, out_dir)
    stats.update(trained=True, dpo={**dpo_stats, "beta": cfg.beta, "lr": cfg.lr, **counts}, note=None)
    return stats


def summary_line(stats: dict) -> str:
    head = (f"prefer: {stats['questions_sampled']} questions x {stats['samples']} chains "
            f"({stats['resumed']} resumed), {100 * stats['correct_share']:.1f}% correct, "
            f"{stats['questions_kept']} questions in band, {stats['pairs']} pairs")
    if not stats["trained"]:
        return head + "; no pairs: distilled model copied unchanged"
    dpo = stats["dpo"]
    return (head + f"; DPO {dpo['steps']} steps (beta {dpo['beta']}, lr {dpo['lr']:g}), loss {dpo['train_loss']}"
            + (f", reward accuracy {dpo['rewards_accuracies']}" if "rewards_accuracies" in dpo else ""))
