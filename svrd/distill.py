"""distill: fine-tune the student on (image + question) -> (rationale + answer).

transformers' Trainer runs the loop (so accelerate/DDP/FSDP, gradient accumulation, mixed
precision and checkpoint resume come for free: train.precision bf16/fp16 is autocast over fp32
weights, never half-precision weights; fp16 adds a grad scaler, on CPU too); what is ours is the
data (svrd.examples: prompt and image tokens masked), the frozen vision encoder, and what DVCLive
records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from svrd.examples import Collator, Example, TrainingDataset, tokenizer_of
from svrd.io import atomic_dir
from svrd.models import CpuFp16Trainer, mixed_precision, require_fp32_trainable

log = logging.getLogger(__name__)

# Adam is AdamW with weight decay 0 (the decoupled decay is then a no-op), so the paper's
# optimizer is exactly `adamw_torch` with weight_decay forced to 0.
OPTIMIZERS = {"adam": "adamw_torch", "adamw": "adamw_torch", "sgd": "sgd", "adafactor": "adafactor"}


class TokenCount:
    """Real and padding tokens of the training batches, for the tokens/s curve and summary, counted by the
    trainer as batches arrive (not by the collator: with data loader workers it runs in their processes).
    Summed where the batch lies (no GPU sync per step); read when logged."""

    def __init__(self):
        self._real = 0
        self.total = 0

    def add(self, attention_mask: torch.Tensor) -> None:
        self._real = self._real + attention_mask.sum()
        self.total += attention_mask.numel()

    @property
    def tokens(self) -> int:
        return int(self._real)

    @property
    def pad_tokens(self) -> int:
        return self.total - self.tokens


def data_workers(setting: int | str) -> int:
    """train.data_workers as applied. auto: none on CPU, where a worker takes a core from the training
    itself; on a GPU one per CPU core but one, at most 8, since the processor's image work on the CPU
    (2-5 s per batch of 16 for SmolVLM at 640x480 on an H200's host, benchmarks/gpu_check.py) would otherwise
    leave the GPU waiting between steps."""
    if setting != "auto":
        return int(setting)
    if not torch.cuda.is_available():
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from (seed, epoch) alone.

    transformers' sampler draws from the global RNG, so a run resumed in epoch 2 replayed
    epoch 1's order; here the order of epoch e is the same whether the run got there
    uninterrupted or from a checkpoint, and on every rank. The Trainer calls set_epoch.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class LengthGroupedTrainer(CpuFp16Trainer, Trainer):
    """Trainer that takes precomputed lengths instead of encoding every example to measure it (and computes
    train.precision=fp16 in fp16 autocast with a grad scaler on CPU too: CpuFp16Trainer)."""

    def __init__(self, *args, lengths: list[int] | None = None, counter: TokenCount | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._lengths = lengths
        self.counter = counter if counter is not None else TokenCount()

    def training_step(self, model, inputs, *args, **kwargs):
        if "attention_mask" in inputs:
            self.counter.add(inputs["attention_mask"])
        return super().training_step(model, inputs, *args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        if self.args.train_sampling_strategy == "group_by_length" and self._lengths is not None:
            return EpochSeededLengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps, self._lengths,
                seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resume with the weights the checkpoint holds.

        transformers saves checkpoints in the Hub's original key names (for LLaVA,
        `language_model.model.*`) but Trainer loads them with a non-strict `load_state_dict`
        that skips that renaming (huggingface/transformers#43701), so a resumed VLM silently
        went on from its *initial* weights with the optimizer state of step N. We load through
        `from_pretrained`, the path that renames keys, and copy every tensor in strictly.
        """
        from transformers import PreTrainedModel

        model = self.model if model is None else model
        plain = isinstance(model, PreTrainedModel) and not self.is_fsdp_enabled
        if not plain or not any(Path(resume_from_checkpoint).glob("model*.safetensors")):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)  # adapters, FSDP shards
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=next(model.parameters()).dtype,
                                            device_map="cpu")
        model.load_state_dict(saved.state_dict(), strict=True)
        del saved


class LiveCallback(TrainerCallback):
    """DVCLive curves keyed by optimizer step: loss, lr, throughput; val loss and accuracy."""

    def __init__(self, live, counter: TokenCount, evaluate_accuracy=None):
        self.live = live
        self.counter = counter
        self.evaluate_accuracy = evaluate_accuracy
        self._t0 = time.perf_counter()
        self._tokens0 = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.live.step = state.global_step
        now = time.perf_counter()
        for key, name in (("loss", "train/loss"), ("learning_rate", "train/lr"), ("eval_loss", "val/loss"),
                          ("grad_norm", "train/grad_norm")):
            if key in logs:
                self.live.log_metric(name, float(logs[key]))
        if "loss" in logs and now > self._t0:
            tokens = self.counter.tokens - self._tokens0
            self.live.log_metric("train/tokens_per_s", round(tokens / (now - self._t0), 1))
            self.live.log_metric("train/epoch", round(float(logs.get("epoch", state.epoch or 0)), 3))
            self._t0, self._tokens0 = now, self.counter.tokens

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.evaluate_accuracy is not None and state.is_world_process_zero:
            acc = self.evaluate_accuracy(model)
            self.live.step = state.global_step
            self.live.log_metric("val/acc", acc)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.live.step = state.global_step
            self.live.make_summary()


def run_fingerprint(student: str, train_cfg: dict, examples: list[Example]) -> str:
    """Identifies a training run: checkpoints are resumed only by the same run."""
    h = hashlib.sha256()
    h.update(json.dumps({"student": student, "train": train_cfg}, sort_keys=True, default=str).encode())
    for ex in examples:
        h.update(ex.pid.encode())
        h.update(ex.target.encode())
        h.update(hashlib.sha256(ex.image or b"").digest())
    return h.hexdigest()[:16]


def training_arguments(cfg, output_dir: str, use_bf16: bool, use_fp16: bool, has_eval: bool) -> TrainingArguments:
    weight_decay = 0.0 if cfg.optimizer == "adam" else cfg.weight_decay
    workers = data_workers(cfg.data_workers)
    return TrainingArguments(
        output_dir=output_dir,
        optim=OPTIMIZERS[cfg.optimizer],
        learning_rate=cfg.lr,
        weight_decay=weight_decay,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.schedule,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        logging_steps=10,
        logging_first_step=True,  # every run, however short, has a point on the loss curve
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=use_bf16,
        fp16=use_fp16,
        activation_checkpointing=cfg.gradient_checkpointing,
        dataloader_pin_memory=torch.cuda.is_available(),
        # On CPU, accelerate forms a gloo process group under torchrun only when told it is CPU
        # training; otherwise each rank silently trains alone on the whole dataset.
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,  # not re-forked (and re-importing) every epoch
        report_to="none",
        disable_tqdm=False,
        save_only_model=False,
    )


def latest_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete checkpoint: Trainer writes trainer_state.json last, so a checkpoint
    that a kill cut short (no state, or a state file cut mid-write) is skipped."""
    ckpts = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    for ckpt in reversed(ckpts):
        try:
            json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("skipping incomplete checkpoint %s", ckpt)
            continue
        return str(ckpt)
    return None


def train(model, processor, train_examples: list[Example], val_examples: list[Example], cfg, checkpoint_dir: str,
          live=None, evaluate_accuracy=None, vision_cache: str | Path | None = None) -> dict:
    """Train in place; resumes from the newest checkpoint in `checkpoint_dir` if one exists.

    `vision_cache` (train.cache_vision_features): a folder of cached frozen vision features
    (svrd.features); the student then trains on them instead of pixel_values, with the same loss.
    """
    tok = tokenizer_of(processor)
    feature_hook, feature_stats = None, None
    if vision_cache is not None:  # cached frozen vision features instead of pixel_values (svrd.features)
        from svrd.features import prepare

        train_ds, val_ds, feature_hook, feature_stats = prepare(
            model, processor, train_examples, val_examples, cfg.max_length, vision_cache)
    else:
        train_ds = TrainingDataset(processor, train_examples, cfg.max_length)
        val_ds = TrainingDataset(processor, val_examples, cfg.max_length) if val_examples else None
    collator = Collator(tok.pad_token_id)
    counter = TokenCount()
    require_fp32_trainable(model)
    compute = mixed_precision(cfg.precision, next(model.parameters()).device)
    args = training_arguments(cfg, checkpoint_dir, compute == "bf16", compute == "fp16", val_ds is not None)
    callbacks = [LiveCallback(live, counter, evaluate_accuracy)] if live is not None else []
    trainer = LengthGroupedTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, data_collator=collator,
        callbacks=callbacks, lengths=train_ds.lengths() if cfg.group_by_length else None, counter=counter,
    )
    resume = latest_checkpoint(checkpoint_dir)
    if resume:
        print(f"distill: resuming from {resume}")
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
        wall = time.perf_counter() - t0
        val_loss = float(trainer.evaluate()["eval_loss"]) if val_ds is not None else None
    finally:
        if feature_hook is not None:  # the saved/inferred student takes pixel_values again
            feature_hook.remove()
    stats = {
        "train_loss": round(float(result.training_loss), 4),
        "steps": int(result.global_step),
        "examples": len(train_examples),
        "effective_batch": cfg.batch_size * cfg.grad_accum * max(1, args.world_size),
        "processes": max(1, args.world_size),  # data-parallel ranks (torchrun / accelerate launch)
        # Table 3 as run: the optimizer transformers used, its decay, schedule and precision
        "optimizer": args.optim.value if hasattr(args.optim, "value") else str(args.optim),
        "weight_decay": args.weight_decay,
        "lr": cfg.lr,
        "schedule": cfg.schedule,
        "warmup_steps": cfg.warmup_steps,
        "dtype": "float32",  # the weights, and so the optimizer's state (require_fp32_trainable)
        "mixed_precision": compute or "no",  # the autocast dtype of forward and backward
        "seed": cfg.seed,
        "wall_s": round(wall, 1),
        "tokens": counter.tokens,  # real (not padding) tokens trained on
        "tokens_per_s": round(counter.tokens / wall, 1) if wall else 0.0,
        "pad_share": round(counter.pad_tokens / max(1, counter.total), 4),
        "data_workers": args.dataloader_num_workers,
        "resumed_from": resume,
        # train.max_length as applied (null: the longest example) and targets cut after </CONCLUSION>
        "max_length": train_ds.max_length,
        "truncated_targets": train_ds.truncated,
    }
    if val_loss is not None:
        stats["val_loss"] = round(val_loss, 4)
    if feature_stats is not None:
        stats["vision_cache"] = feature_stats
    return stats


def save_student(model, processor, out_dir: str | Path, merge: bool = True):
    """Save the trained student and its processor (safetensors); returns the model saved.

    A LoRA student is merged into its base weights first when `merge` (infer then loads a plain
    model); otherwise only the adapter is written (adapter_config.json names the base), which
    svrd.models.load_model puts back on its base.
    """
    from svrd.lora import finalize

    model = finalize(model, merge)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)  # safetensors (a PeftModel: adapter_model.safetensors only)
        processor.save_pretrained(tmp)
    return model
