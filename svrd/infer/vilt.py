"""ViLT (a VQA classifier, e.g. dandelin/vilt-b32-finetuned-vqa) as an `infer.models` entry.

An entry whose model folder (or Hub id) has `config.model_type == "vilt"` is answered here instead
of by generation: svrd.baselines.vilt maps each option onto the classifier's answer vocabulary and
picks the best-scoring one, or none (an option that maps to nothing cannot be chosen; no mapped
option, or a tie, is a null answer, scored as wrong: never a guess). The rows are the predictions
table's (svrd.infer.schema), in `generate` mode:

- `raw`: the classifier's own top answer over its whole vocabulary (what it would say unprompted);
- `choice` = `choice_text`: the option chosen through the mapping (null when none);
- `new_tokens`: 0 (nothing is generated).

ViLT reads the bare question (its text encoder takes 40 tokens; the options are never shown to it,
they are matched against its answer vocabulary) and the question's image; a question without one
gets a blank white image. Only `infer.mode: generate` and `infer.engine: hf` apply.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from svrd.baselines.vilt import ViltAnswerer, choose_option
from svrd.errors import SvrdError
from svrd.images import open_png
from svrd.infer.predict import in_batches

MODEL_TYPE = "vilt"
BLANK_SIDE = 384  # ViltImageProcessor's shortest edge


def is_vilt(path: str, trust_remote_code: bool = False) -> bool:
    """Whether the model at `path` is a ViLT (its config's model_type)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):  # not loadable as a config: the generative path reports it
        return False
    return getattr(config, "model_type", None) == MODEL_TYPE


def check_settings(name: str, mode: str, engine: str) -> None:
    if engine != "hf":
        raise SvrdError(f"infer.models.{name} is a ViLT classifier: it runs with infer.engine hf, not {engine!r}")
    if mode != "generate":
        raise SvrdError(f"infer.models.{name} is a ViLT classifier: it answers in infer.mode generate only "
                        f"(got {mode!r}; it generates no rationale to score, sample or search)")


def load(path: str, trust_remote_code: bool, dtype, device):
    from transformers import ViltForQuestionAnswering, ViltProcessor

    model = ViltForQuestionAnswering.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.to(device).eval(), ViltProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)


def _image(row: dict) -> Image.Image:
    if row.get("image") is not None:
        return open_png(row["image"])
    return Image.new("RGB", (BLANK_SIDE, BLANK_SIDE), (255, 255, 255))


def predict_vilt(model, processor, test_rows: list[dict], model_name: str, batch_size: int = 32,
                 done: dict[str, dict] | None = None,
                 on_batch: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Rows (PREDICTION_SCHEMA, plus "seconds") in the order of `test_rows`; `done` / `on_batch` as in
    svrd.infer.predict.predict (finished rows are not redone; each batch is handed over as it ends)."""
    answerer = ViltAnswerer(model, processor)
    labels = model.config.id2label

    def answer(batch: list[dict]) -> list[dict]:
        logits = answerer.logits([_image(r) for r in batch], [r["question"] for r in batch])
        rows = []
        for r, row_logits in zip(batch, logits, strict=True):
            picked = choose_option(row_logits.tolist(), r["choices"], answerer.index)
            top = int(row_logits.argmax())
            rows.append({"pid": r["pid"], "model": model_name, "mode": "generate",
                         "raw": str(labels.get(top, labels.get(str(top), ""))), "choice": picked,
                         "choice_text": picked, "option_logprobs": None, "votes": None, "new_tokens": 0})
        return rows

    done = dict(done or {})
    in_batches([r for r in test_rows if r["pid"] not in done], batch_size, answer, done, on_batch)
    return [done[r["pid"]] for r in test_rows]
