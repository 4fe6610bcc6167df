"""distill: fine-tune the student on the teacher's rationales (vision encoder frozen,
loss on target tokens only). Resumes from its last checkpoint when killed.

    python stages/distill.py
    dvc exp run -S train.lr=1.4e-5
    accelerate launch --num_processes 4 stages/distill.py    # DDP on 4 GPUs (FSDP: accelerate config)
"""

import shutil

import _project  # noqa: F401  (first: this project's svrd, not another clone's)

from dvclive import Live
from svrd.distill import run_fingerprint, save_student, train
from svrd.examples import build_examples
from svrd.features import check_params
from svrd.infer.predict import accuracy_on
from svrd.io import read_rows, write_json
from svrd.lora import apply_lora
from svrd.models import freeze, image_tokens_line, load_student
from svrd.params import load_params
from svrd.split import refuse_test_pids
from svrd.stage import (
    DISTILLED,
    FEATURES,
    LIVE_DISTILL,
    METRICS,
    RATIONALES,
    SPLIT_DIR,
    cache_dir,
    is_main_process,
    run,
)


def main() -> None:
    params = load_params()
    s, t = params.student, params.train
    # train.cache_vision_features: exact only while the vision encoder is frozen (the features stage caches
    # after the projector when student.freeze_projector, before it otherwise; svrd.features.prepare checks
    # that data/features was written for this very student and freezing, and refuses it otherwise).
    check_params(s, t)
    train_rows = read_rows(SPLIT_DIR / "train.parquet")
    val_rows = read_rows(SPLIT_DIR / "val.parquet")
    rationales = {r["pid"]: r for r in read_rows(RATIONALES)}
    # Each row's own split: a pid-keyed map let a rationale marked "train" hide a test row of the same pid.
    inputs = train_rows + val_rows + list(rationales.values())
    refuse_test_pids([r["pid"] for r in inputs], splits=[r.get("split") for r in inputs], stage="distill")
    examples = build_examples(train_rows, rationales, t.target, t.conclusion, t.mix_answer_share, t.seed)
    val_examples = build_examples(val_rows, rationales, t.target, t.conclusion, t.mix_answer_share, t.seed)

    model, processor, tokens, counts = load_student(s, t.precision)  # as the features stage loads it
    if t.lora.enabled:
        model = apply_lora(model, t.lora, train_projector=not s.freeze_projector, seed=t.seed)
        counts = freeze(model, vision=s.freeze_vision, projector_too=s.freeze_projector)

    vision_cache = FEATURES if t.cache_vision_features else None  # written by the features stage

    # data_workers changes how fast batches come, not which: a run killed with one count resumes with another
    run = {**t.model_dump(exclude={"data_workers"}), "student": s.model_dump()}
    checkpoints = cache_dir() / "distill" / run_fingerprint(s.model, run, examples)
    eval_rows = val_rows[: t.eval_questions]
    evaluate = (lambda m: accuracy_on(m, processor, eval_rows, t.eval_max_new_tokens)) if eval_rows else None
    if not is_main_process():  # `accelerate launch`: every rank trains, rank 0 alone logs and saves
        train(model, processor, examples, val_examples, t, str(checkpoints), None, None, vision_cache=vision_cache)
        return
    with Live(str(LIVE_DISTILL), save_dvc_exp=False, dvcyaml=None) as live:
        stats = train(model, processor, examples, val_examples, t, str(checkpoints), live, evaluate,
                      vision_cache=vision_cache)
    save_student(model, processor, DISTILLED, merge=t.lora.merge)
    shutil.rmtree(checkpoints, ignore_errors=True)  # finished: checkpoints were only for resuming
    stats.update(counts, trust_remote_code=s.trust_remote_code, image_tokens=tokens["image_tokens"],
                 image_tokens_applied=tokens["applied"], image_processing=tokens["how"], family=tokens["family"],
                 lora=t.lora.enabled)
    write_json(METRICS / "distill.json", stats)
    print(f"distill: {stats['examples']} examples, {stats['steps']} steps (effective batch {stats['effective_batch']}), "
          f"train loss {stats['train_loss']}, val loss {stats.get('val_loss')}, {stats['tokens_per_s']} tokens/s, "
          f"{counts['trainable'] / 1e6:.2f}M of {counts['parameters'] / 1e6:.2f}M parameters trained"
          + (" (LoRA)" if t.lora.enabled else "")
          + f", {image_tokens_line(tokens)}"
          + (f", {stats['truncated_targets']} targets cut after </CONCLUSION>" if stats["truncated_targets"] else "")
          + (" [trust_remote_code ON]" if s.trust_remote_code else ""))


if __name__ == "__main__":
    run(main)
