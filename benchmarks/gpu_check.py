"""GPU check: random-weight students of SmolVLM-256M's and SmolVLM-2.2B's real architectures, trained
and decoded through svrd's own paths, with peak memory and throughput in one table.

    python -m benchmarks.gpu_check                 # on a GPU: both students, batch 16 training, batch 32 decoding
    python -m benchmarks.gpu_check --tiny          # anywhere: narrow layers and small images (a smoke run)
    python -m benchmarks.gpu_check --models smolvlm-256m --steps 8 --precision bf16

Nothing is downloaded: the architectures are written below from the published config.json,
preprocessor_config.json and processor_config.json (the file each value comes from is named
beside it), the weights are random, and the tokenizer is a small BPE trained here (the model keeps
its real vocabulary size, so embeddings and logits are full size). Each student is saved to a
temporary folder and loaded back through svrd.models.load_student, as `student.model` would be:
params.yaml's student.* and train.* apply (train.precision unless --precision). Then:

- distill: `--steps` optimizer steps of svrd.distill.train at `--batch` on 640x480 images with
  rationale-length targets; peak GPU memory, tokens/s, seconds per step, and how long the
  processor takes to prepare one batch on the CPU (the data loader runs in the training process);
- generate: one batch of `--gen-batch` prompts through svrd.infer's encoding and greedy decoding,
  `--new-tokens` forced (min = max), in the inference dtype (as the infer stage loads it).
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import io
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/gpu_check.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1024**3

# HuggingFaceTB/SmolVLM-256M-Instruct: SigLIP base patch16/512 + SmolLM2-135M
SMOLVLM_256M = {
    "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,  # config.json vision_config
               "num_attention_heads": 12, "image_size": 512, "patch_size": 16},
    "text": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,  # config.json text_config
             "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49280, "rope_theta": 100000.0,
             "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
    "scale_factor": 4,  # config.json
    "image_seq_len": 64,  # processor_config.json
    "longest_edge": 2048, "tile": 512,  # preprocessor_config.json size / max_image_size (longest_edge)
    "parameters": 256e6,  # the name
}
# HuggingFaceTB/SmolVLM-Instruct (SmolVLM 2.2B): SigLIP so400m patch14/384 + SmolLM2-1.7B
SMOLVLM_2B = {
    "vision": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,  # config.json vision_config
               "num_attention_heads": 16, "image_size": 384, "patch_size": 14},
    "text": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,  # config.json text_config
             "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 49155, "rope_theta": 273768.0,
             "max_position_embeddings": 16384, "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
    "scale_factor": 3,  # config.json
    "image_seq_len": 81,  # processor_config.json
    "longest_edge": 1536, "tile": 384,  # preprocessor_config.json size / max_image_size (longest_edge)
    "parameters": 2.25e9,  # the model card: 2.2B
}
# --tiny: the same structure, narrow, with small images (a CPU smoke run of the whole script)
TINY = {
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
               "image_size": 32, "patch_size": 4},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 2, "vocab_size": None, "rope_theta": 10000.0, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
    "scale_factor": 2, "image_seq_len": 16, "longest_edge": 128, "tile": 32, "parameters": None,
}
MODELS = {"smolvlm-256m": SMOLVLM_256M, "smolvlm-2.2b": SMOLVLM_2B}

SPECIAL = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<|im_start|>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
TEMPLATE = (  # SmolVLM's chat template, reduced: "<|im_start|>User:<image>question<end_of_utterance>\nAssistant:"
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
QUESTION = ("Question: Which of these states is farthest north?\nContext: Look at the map.\n"
            "Options: (A) Arizona (B) Oregon (C) Georgia (D) Ohio")
RATIONALE = ("<SUMMARY> The question asks which state on the map lies farthest to the north. </SUMMARY>\n"
             "<CAPTION> A map of the United States with four states highlighted and a compass rose. </CAPTION>\n"
             "<REASONING> " + "To find the answer, look at the compass rose: north is up. " * 6 + "</REASONING>\n"
             "<CONCLUSION> B </CONCLUSION>")


@functools.cache
def _trained_tokenizer():
    from svrd.tiny import train_tokenizer

    tok = train_tokenizer([QUESTION, RATIONALE] * 20, 400)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL})
    return tok


def tokenizer():
    """A small BPE with SmolVLM's special tokens (trained once; each caller gets its own copy)."""
    return copy.deepcopy(_trained_tokenizer())


def build_config(spec: dict, tok):
    from transformers import Idefics3Config, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    text = dict(spec["text"], vocab_size=spec["text"]["vocab_size"] or len(tok))
    return Idefics3Config(
        vision_config=Idefics3VisionConfig(**spec["vision"]),
        text_config=LlamaConfig(**text, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=spec["scale_factor"])


def count_parameters(spec: dict) -> int:
    """Parameters of the architecture, on the meta device (no memory, no init)."""
    import torch
    from transformers import Idefics3ForConditionalGeneration

    with torch.device("meta"):
        model = Idefics3ForConditionalGeneration(build_config(spec, tokenizer()))
    return sum(p.numel() for p in model.parameters())


def save_student(spec: dict, out_dir: Path, device) -> int:
    """A random-weight student of `spec` with SmolVLM's processor settings, saved like a Hub folder."""
    import torch
    from transformers import Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tok = tokenizer()
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": spec["longest_edge"]},
        max_image_size={"longest_edge": spec["tile"]}, resample=1, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=spec["image_seq_len"],
                                  chat_template=TEMPLATE)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 2.2B model's init on a CPU takes minutes
        model = Idefics3ForConditionalGeneration(build_config(spec, tok))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    n = sum(p.numel() for p in model.parameters())
    del model
    return n


def examples(n: int, seed: int = 0):
    """n questions with 640x480 noise images (a photo's PNG size) and rationale-length targets."""
    import numpy as np
    from PIL import Image

    from svrd.examples import Example

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(Example(f"gpu-{i}", buf.getvalue(), QUESTION, RATIONALE))
    return out


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        gc.collect()  # the previous student lives on in a reference cycle until collected: not this one's memory
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def check_model(name: str, spec: dict, args, work: Path) -> dict:
    """Build, load through svrd, train `args.steps` steps, decode one batch; the measurements."""
    import torch

    from svrd.distill import train
    from svrd.examples import Collator, encode_training, tokenizer_of
    from svrd.infer.encoding import encode_batch
    from svrd.infer.generation import generate_ids
    from svrd.models import load_student, pick_device, pick_dtype
    from svrd.params import load_params

    device = pick_device()
    folder = work / name
    n_params = save_student(spec, folder, device)
    params = load_params().with_overrides({
        "student.model": str(folder), "train.batch_size": args.batch, "train.grad_accum": 1, "train.epochs": 1,
        "train.warmup_steps": 0, "train.save_steps": 0, "train.eval_questions": 0, "train.lr": 1.4e-5,
        "train.optimizer": "adam", "train.max_length": None,
        **({"train.precision": args.precision} if args.precision else {}),
        **({"train.data_workers": args.data_workers} if args.data_workers is not None else {})})
    model, processor, tokens, counts = load_student(params.student, params.train.precision)
    train_set = examples(args.batch * args.steps)

    t0 = time.perf_counter()  # the CPU side alone: what the data loader does for one batch
    Collator(tokenizer_of(processor).pad_token_id)([encode_training(processor, ex, None) for ex in train_set[:args.batch]])
    prep_s = time.perf_counter() - t0

    # One step first, not timed: CUDA's and the kernels' first-call set-up would otherwise count as training
    train(model, processor, train_set[:args.batch], [], params.train, str(work / f"{name}-warmup"))
    _reset_peak(device)
    stats = train(model, processor, train_set, [], params.train, str(work / f"{name}-ckpt"))
    _sync(device)
    train_peak = _peak_gib(device)

    infer_dtype = pick_dtype(params.train.precision, device)  # as the infer stage loads the saved student
    model = model.to(infer_dtype).eval()
    batch = encode_batch(processor, examples(args.gen_batch, seed=1)).to(device)
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(infer_dtype)
    _reset_peak(device)
    t0 = time.perf_counter()
    generate_ids(model, processor, batch, args.new_tokens, min_new_tokens=args.new_tokens)
    _sync(device)
    gen_s = time.perf_counter() - t0
    gen_peak = _peak_gib(device)
    del model
    return {
        "model": name, "parameters": n_params, "trainable": counts["trainable"],
        "image_tokens": tokens["image_tokens"], "precision": params.train.precision,
        "mixed_precision": stats.get("mixed_precision", stats.get("dtype")),
        "batch": args.batch, "steps": stats["steps"], "data_workers": stats["data_workers"],
        "max_length": stats.get("max_length"),
        "step_s": stats["wall_s"] / max(1, stats["steps"]), "train_tokens_per_s": stats["tokens_per_s"],
        "prep_s_per_batch": prep_s, "train_peak_gib": train_peak,
        "gen_batch": args.gen_batch, "prompt_tokens": int(batch["input_ids"].shape[1]), "new_tokens": args.new_tokens,
        "gen_s": gen_s, "gen_tokens_per_s": args.gen_batch * args.new_tokens / gen_s, "gen_peak_gib": gen_peak,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
    }


COLUMNS = [("model", "{}"), ("parameters", "{:,}"), ("image_tokens", "{}"), ("precision", "{}"),
           ("mixed_precision", "{}"), ("batch", "{}"), ("steps", "{}"), ("data_workers", "{}"), ("max_length", "{}"), ("step_s", "{:.2f}"),
           ("train_tokens_per_s", "{:,.0f}"), ("prep_s_per_batch", "{:.2f}"), ("train_peak_gib", "{:.2f}"),
           ("gen_batch", "{}"), ("prompt_tokens", "{}"), ("new_tokens", "{}"), ("gen_tokens_per_s", "{:,.0f}"),
           ("gen_peak_gib", "{:.2f}"), ("device", "{}")]


def table(results: list[dict]) -> str:
    cells = [[("-" if r.get(k) is None else fmt.format(r[k])) for k, fmt in COLUMNS] for r in results]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, (k, _) in enumerate(COLUMNS)]
    lines = ["  ".join(k.ljust(w) for (k, _), w in zip(COLUMNS, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="narrow layers and small images (CPU smoke run)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--steps", type=int, default=4, help="distill steps")
    parser.add_argument("--batch", type=int, default=16, help="distill batch (per device)")
    parser.add_argument("--gen-batch", type=int, default=32, help="prompts decoded together")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens decoded per prompt (forced)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                        help="train.precision (default: params.yaml's)")
    parser.add_argument("--data-workers", type=int, default=None,
                        help="train.data_workers (default: params.yaml's; auto: 0 on CPU, up to 8 on a GPU)")
    args = parser.parse_args(argv)
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {sorted(MODELS)}")
    return args


def main(argv=None) -> list[dict]:
    from benchmarks.common import machine_line

    args = parse_args(argv)
    print(machine_line(), flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="svrd-gpu-check-") as tmp:
        for name in args.models.split(","):
            spec = TINY if args.tiny else MODELS[name]
            print(f"{name}{' (tiny)' if args.tiny else ''}: building, training {args.steps} steps at batch "
                  f"{args.batch}, decoding {args.gen_batch} x {args.new_tokens} tokens ...", flush=True)
            results.append(check_model(name + ("-tiny" if args.tiny else ""), spec, args, Path(tmp)))
    print(table(results), flush=True)
    return results


def run(quick: bool = False) -> list[dict]:
    """`python -m benchmarks` on a machine without a GPU: the tiny smoke run, as rows (no targets)."""
    import torch

    from benchmarks.common import row

    tiny = quick or not torch.cuda.is_available()
    argv = ["--tiny", "--steps", "1", "--batch", "2", "--gen-batch", "2", "--new-tokens", "4"] if tiny else []
    results = main(argv)
    note = "tiny shapes (no GPU)" if tiny else "real shapes"
    return [row(f"gpu_check.{r['model']}.train_tokens_per_s", round(r["train_tokens_per_s"], 1), None, None, "-",
                "tokens/s", note) for r in results]


if __name__ == "__main__":
    main()
