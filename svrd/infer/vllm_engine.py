"""infer.engine=vllm: vLLM as an optional engine for the student's inference (GPU only: `pip install -e ".[vllm]"`).

`predict_vllm` gives the rows `svrd.infer.predict.predict` gives (PREDICTION_SCHEMA, `generate` mode),
from the same inputs by the same rules:

- the same prompt: the model's own HF processor renders `messages_for(...)` with its chat
  template (add_generation_prompt=True, tokenize=False), exactly as `svrd.infer.encoding.encode_batch`
  does; vLLM then tokenizes that text and expands the image tokens with the same HF processor;
- the same image: the filtered PNG bytes opened as RGB (`svrd.images.open_png`), passed as
  `multi_modal_data={"image": PIL image}`;
- greedy decoding: SamplingParams(temperature=0, max_tokens=max_new_tokens), special tokens
  skipped in the text, which is stripped;
- the same reading of the answer: `svrd.answers.extract_choice`; nothing found is null;
- new_tokens counts the generated tokens before the first EOS / padding / stop token, as the
  HF path does; `seconds` is each question's share of its chunk's wall time.

vLLM schedules its own batches (continuous batching), so there is no batch size; `chunk_size`
only sets how often finished rows are handed to `on_batch` (to persist them for a resume).
Likelihood answering (`infer.mode=likelihood`) needs the HF engine.

vllm is imported inside the function: the package imports and its tests run without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from svrd.answers import extract_choice
from svrd.errors import SvrdError
from svrd.examples import Example, messages_for, tokenizer_of
from svrd.images import open_png
from svrd.infer.schema import PREDICTION_SCHEMA

MISSING_VLLM = ("infer.engine=vllm needs the vllm extra on a CUDA machine: pip install -e \".[vllm]\" "
                "(after a CUDA build of torch), or use infer.engine=hf")


def _import_vllm():
    try:
        from vllm import LLM, SamplingParams
    except (ImportError, OSError, RuntimeError) as exc:  # not installed; no CUDA or compiled parts
        raise SvrdError(f"{MISSING_VLLM} ({type(exc).__name__}: {exc})") from None
    return LLM, SamplingParams


def build_requests(processor, examples: list[Example]) -> list[dict]:
    """One vLLM prompt per example: the chat-template text and, when it has one, its RGB image."""
    requests = []
    for ex in examples:
        text = processor.apply_chat_template(messages_for(ex.prompt, ex.image is not None),
                                             add_generation_prompt=True, tokenize=False)
        request: dict = {"prompt": text}
        if ex.image is not None:
            request["multi_modal_data"] = {"image": open_png(ex.image)}
        requests.append(request)
    return requests


def _stop_ids(tok) -> set[int]:
    return {i for i in (getattr(tok, "eos_token_id", None), getattr(tok, "pad_token_id", None)) if i is not None}


def _new_tokens(completion, stop: set[int]) -> int:
    """Generated tokens before the first EOS, padding or stop token (vLLM keeps the EOS it stopped on)."""
    stop_reason = getattr(completion, "stop_reason", None)
    stops = stop | ({stop_reason} if isinstance(stop_reason, int) else set())
    ids = list(completion.token_ids)
    for k, i in enumerate(ids):
        if i in stops:
            return k
    return len(ids)


def predict_vllm(
    model_path: str,
    examples: list[Example],
    choices_of: dict[str, list[str]],
    model_name: str,
    max_new_tokens: int,
    trust_remote_code: bool = False,
    *,
    done: dict[str, dict] | None = None,
    on_batch: Callable[[list[dict]], None] | None = None,
    chunk_size: int = 512,
    processor=None,
    llm=None,
    **engine_kwargs,
) -> list[dict]:
    """Greedy predictions with vLLM; rows in PREDICTION_SCHEMA, in the order of `examples`.

    `engine_kwargs` go to `vllm.LLM` (tensor_parallel_size, gpu_memory_utilization, max_model_len,
    dtype, seed, ...); limit_mm_per_prompt defaults to one image. `done` / `on_batch` work as in
    `svrd.infer.predict.predict` (rows already made are not redone; each finished chunk is handed over).
    `processor` / `llm` let a caller reuse loaded ones.
    """
    LLM, SamplingParams = _import_vllm()
    from svrd.models import adapter_base, load_processor

    if adapter_base(model_path) is not None:
        raise SvrdError(f"{model_path} is a LoRA adapter; infer.engine=vllm needs a full model "
                        f"(merge the adapter into its base first) or use infer.engine=hf")
    if processor is None:
        processor = load_processor(model_path, trust_remote_code)
    done = dict(done or {})
    todo = [ex for ex in examples if ex.pid not in done]
    if todo:
        if llm is None:
            engine_kwargs.setdefault("limit_mm_per_prompt", {"image": 1})
            llm = LLM(model=model_path, trust_remote_code=trust_remote_code, **engine_kwargs)
        sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        stop = _stop_ids(tokenizer_of(processor))
        for start in range(0, len(todo), max(1, chunk_size)):
            chunk = todo[start:start + max(1, chunk_size)]
            requests = build_requests(processor, chunk)
            t0 = time.perf_counter()
            outputs = llm.generate(requests, sampling, use_tqdm=False)
            per_item = (time.perf_counter() - t0) / len(chunk)
            if len(outputs) != len(chunk):
                raise SvrdError(f"vllm returned {len(outputs)} outputs for {len(chunk)} prompts")
            rows = []
            for ex, out in zip(chunk, outputs, strict=True):
                completion = out.outputs[0]
                text = (completion.text or "").strip()
                picked = extract_choice(text, choices_of[ex.pid])
                values = {"pid": ex.pid, "model": model_name, "mode": "generate", "raw": text, "choice": picked,
                          "choice_text": picked, "option_logprobs": None,
                          "new_tokens": _new_tokens(completion, stop)}
                # Exactly the schema's columns (a column added to it later is null here), and the timing
                # that run_inference moves to the metrics (svrd.infer.run.pop_seconds).
                rows.append({**{name: values.get(name) for name in PREDICTION_SCHEMA.names}, "seconds": per_item})
            for r in rows:
                done[r["pid"]] = r
            if on_batch is not None:
                on_batch(rows)
    return [done[ex.pid] for ex in examples]
