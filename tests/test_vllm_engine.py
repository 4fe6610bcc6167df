"""svrd.infer.vllm_engine with a fake `vllm` module (vLLM needs CUDA; it is never installed here).

The fake mimics what predict_vllm touches: `LLM(model=..., **kwargs)`, `LLM.generate(prompts,
sampling_params, use_tqdm=...)` returning RequestOutput-like objects (`.outputs[0].text`,
`.outputs[0].token_ids`, `.outputs[0].stop_reason`), and `SamplingParams(**kwargs)`.
"""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field

import pyarrow as pa
import pytest
from tiny_models import varied_sample_student

from svrd.errors import SvrdError
from svrd.examples import Example, messages_for, tokenizer_of
from svrd.images import open_png
from svrd.infer.encoding import examples_from_rows
from svrd.infer.predict import predict
from svrd.infer.schema import PREDICTION_SCHEMA
from svrd.infer.vllm_engine import MISSING_VLLM, predict_vllm


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    prompt: str
    outputs: list[Completion]


@dataclass
class FakeVllm:
    """A fake `vllm` module; `respond(request, sampling) -> Completion` scripts the outputs."""

    respond: object
    inits: list[dict] = field(default_factory=list)
    calls: list[tuple[list[dict], object]] = field(default_factory=list)

    def module(self) -> types.ModuleType:
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class LLM:
            def __init__(self, model, **kwargs):
                fake.inits.append({"model": model, **kwargs})

            def generate(self, prompts, sampling_params=None, use_tqdm=True):
                fake.calls.append((list(prompts), sampling_params))
                return [RequestOutput(p["prompt"], [fake.respond(p, sampling_params)]) for p in prompts]

        mod = types.ModuleType("vllm")
        mod.LLM, mod.SamplingParams = LLM, SamplingParams
        return mod


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Sample questions (with images) and a tiny LLaVA whose greedy outputs differ by question."""
    tiny = varied_sample_student(tmp_path_factory.mktemp("vllm"), per_family=1)
    return {**tiny, "path": str(tiny["path"])}


def _choices(rows) -> dict[str, list[str]]:
    return {r["pid"]: r["choices"] for r in rows}


SCRIPTED = [
    ("<SUMMARY> s </SUMMARY> <CAPTION> c </CAPTION> <REASONING> r </REASONING> <CONCLUSION> B </CONCLUSION>",
     [5, 6, 7, 8]),
    ("  The answer is (A).  ", [9, 10]),
    ("I cannot tell.", [11, 12, 13]),
]


def _scripted(eos: int):
    """Outputs by position in the call: finished ones end with the EOS token, as vLLM returns them."""
    count = {"n": 0}

    def respond(request, sampling):
        text, ids = SCRIPTED[count["n"] % len(SCRIPTED)]
        count["n"] += 1
        return Completion(text, ids + [eos])

    return respond


def test_fake_vllm_gets_the_prompts_images_and_sampling_and_its_outputs_become_rows(tiny, monkeypatch):
    processor, rows = tiny["processor"], tiny["rows"][:3]
    tok = tokenizer_of(processor)
    examples = examples_from_rows(rows)
    text_only = Example("text-only", None, "Which is a mammal?\nOptions: (A) cat (B) trout")
    fake = FakeVllm(_scripted(tok.eos_token_id))
    monkeypatch.setitem(sys.modules, "vllm", fake.module())

    out = predict_vllm(tiny["path"], examples + [text_only], {**_choices(rows), "text-only": ["cat", "trout"]},
                       "student-vllm", 77, tensor_parallel_size=2, processor=processor)

    # The engine: the model path, engine kwargs passed through, one image per prompt by default.
    assert fake.inits == [{"model": tiny["path"], "trust_remote_code": False, "tensor_parallel_size": 2,
                           "limit_mm_per_prompt": {"image": 1}}]
    (requests, sampling), = fake.calls
    assert sampling.kwargs == {"temperature": 0.0, "max_tokens": 77}
    # The same prompts as the HF path: the chat template over messages_for, image placeholder included.
    for ex, req in zip(examples, requests, strict=False):
        assert req["prompt"] == processor.apply_chat_template(messages_for(ex.prompt, True), add_generation_prompt=True,
                                                              tokenize=False)
        img, ref = req["multi_modal_data"]["image"], open_png(ex.image)
        assert img.mode == "RGB" and img.size == ref.size and img.tobytes() == ref.tobytes()
    assert requests[-1] == {"prompt": processor.apply_chat_template(messages_for(text_only.prompt, False),
                                                                    add_generation_prompt=True, tokenize=False)}
    # Rows: exactly the schema's columns, in the order of the examples, parsed by extract_choice.
    assert [r["pid"] for r in out] == [ex.pid for ex in examples] + ["text-only"]
    assert all(list(r) == [*PREDICTION_SCHEMA.names, "seconds"] for r in out)  # seconds: moved to metrics by run_inference
    pa.Table.from_pylist(out, schema=PREDICTION_SCHEMA)
    assert [r["choice"] for r in out] == [1, 0, None, 1]
    assert [r["choice_text"] for r in out] == [1, 0, None, 1]
    assert [r["raw"] for r in out][:3] == [SCRIPTED[0][0], "The answer is (A).", "I cannot tell."]
    assert [r["new_tokens"] for r in out] == [4, 2, 3, 4]  # the EOS it stopped on is not counted
    assert all(r["model"] == "student-vllm" and r["mode"] == "generate" and r["option_logprobs"] is None
               and r["seconds"] >= 0 for r in out)


def test_fake_vllm_resume_and_chunks(tiny, monkeypatch):
    processor, rows = tiny["processor"], tiny["rows"][:5]
    examples = examples_from_rows(rows)
    fake = FakeVllm(_scripted(tokenizer_of(processor).eos_token_id))
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    earlier = {rows[1]["pid"]: {"pid": rows[1]["pid"], "raw": "from an earlier run"}}
    handed = []
    out = predict_vllm(tiny["path"], examples, _choices(rows), "s", 16, processor=processor, done=earlier,
                       on_batch=handed.append, chunk_size=2)
    asked = [[r["prompt"] for r in reqs] for reqs, _ in fake.calls]
    assert [len(a) for a in asked] == [2, 2]  # four left to do, two per chunk
    assert [[r["pid"] for r in rows_] for rows_ in handed] == [[rows[0]["pid"], rows[2]["pid"]],
                                                               [rows[3]["pid"], rows[4]["pid"]]]
    assert out[1] == earlier[rows[1]["pid"]] and [r["pid"] for r in out] == [r["pid"] for r in rows]
    # Nothing left to do: no engine is started at all.
    fake2 = FakeVllm(_scripted(0))
    monkeypatch.setitem(sys.modules, "vllm", fake2.module())
    again = predict_vllm(tiny["path"], examples, _choices(rows), "s", 16, processor=processor,
                         done={r["pid"]: r for r in out})
    assert again == out and fake2.inits == [] and fake2.calls == []


def test_a_fake_vllm_that_decodes_with_the_hf_model_gives_the_hf_paths_rows(tiny, monkeypatch):
    """A fake engine that decodes each request it is given with the tiny HF model (greedy, batch 1)
    must reproduce svrd.infer.predict.predict's rows: so the prompt and image passed carry everything."""
    model, processor, rows = tiny["model"], tiny["processor"], tiny["rows"][:4]
    tok = tokenizer_of(processor)

    def respond(request, sampling):
        from svrd.infer.encoding import to_device
        from svrd.infer.generation import generate_ids

        image = request.get("multi_modal_data", {}).get("image")
        kw = {"images": [image]} if image is not None else {}
        inputs = processor(text=[request["prompt"]], return_tensors="pt", **kw)
        ids = generate_ids(model, processor, to_device(model, inputs), sampling.kwargs["max_tokens"])[0]
        stopped = len(ids) < sampling.kwargs["max_tokens"]
        return Completion(tok.decode(ids, skip_special_tokens=True), ids + ([tok.eos_token_id] if stopped else []))

    fake = FakeVllm(respond)
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    got = predict_vllm(tiny["path"], examples_from_rows(rows), _choices(rows), "m", 24, processor=processor)
    want = predict(model, processor, examples_from_rows(rows), _choices(rows), "m", batch_size=1, max_new_tokens=24,
                   progress=False)
    keys = ("pid", "model", "mode", "raw", "choice", "choice_text", "option_logprobs", "new_tokens")
    assert [{k: r[k] for k in keys} for r in got] == [{k: r[k] for k in keys} for r in want]
    assert len({r["raw"] for r in got}) > 1  # the outputs differ by question: the comparison means something


def test_clear_error_when_vllm_is_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(SvrdError, match=r"infer\.engine=vllm needs the vllm extra on a CUDA machine"):
        # The check comes first: no processor or model is loaded (this path does not even exist).
        predict_vllm(str(tmp_path / "no-model"), [Example("1", None, "q")], {"1": ["a", "b"]}, "m", 8)
    assert "pip install -e" in MISSING_VLLM


def test_a_lora_adapter_folder_is_refused(monkeypatch, tmp_path):
    fake = FakeVllm(_scripted(0))
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "some/base"}))
    with pytest.raises(SvrdError, match="LoRA adapter"):
        predict_vllm(str(tmp_path), [Example("1", None, "q")], {"1": ["a", "b"]}, "m", 8)
    assert fake.inits == []


def test_run_inference_routes_engine_vllm_to_predict_vllm_on_a_fake_vllm(tiny, monkeypatch, tmp_path):
    """run_inference with infer.engine=vllm: vLLM's rows, the usual stats, resume log removed."""
    from svrd.infer.run import run_inference
    from svrd.infer.schema import PREDICTION_SCHEMA
    from svrd.params import load_params

    monkeypatch.setenv("SVRD_CACHE_DIR", str(tmp_path / "cache"))
    fake = FakeVllm(_scripted(tokenizer_of(tiny["processor"]).eos_token_id))
    monkeypatch.setitem(sys.modules, "vllm", fake.module())
    params = load_params().with_overrides({"infer.engine": "vllm", "infer.models.distilled.path": tiny["path"]})
    rows, stats = run_inference(params, "distilled", tiny["rows"][:3])

    assert [r["pid"] for r in rows] == [r["pid"] for r in tiny["rows"][:3]]
    assert set(rows[0]) == set(PREDICTION_SCHEMA.names)
    assert stats["engine"] == "vllm" and stats["questions"] == 3 and stats["parameters"] > 0
    assert len(fake.calls) == 1 and not list((tmp_path / "cache" / "infer").glob("*.jsonl"))


def test_engine_vllm_refuses_modes_it_cannot_run():
    from svrd.params import ParamsError, load_params

    with pytest.raises(ParamsError, match="engine hf"):
        load_params().with_overrides({"infer.engine": "vllm", "infer.mode": "likelihood"})
