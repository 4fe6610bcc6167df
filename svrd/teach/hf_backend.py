"""Teacher as a local transformers VLM (e.g. LLaVA-CoT, an Mllama model).

Loads through AutoModelForImageTextToText / AutoProcessor from a Hub id or a local folder
(trust_remote_code off), bf16 with device_map="auto" on CUDA, fp32 on CPU. Questions go in
batches of `teach.batch_size`, left-padded, through the model's own chat template; greedy when
`teach.temperature` is 0, sampling otherwise (seeded per batch for reproducibility). Answers
are delivered (and cached) after each batch.
"""

from __future__ import annotations

from svrd.errors import SvrdError
from svrd.images import open_png
from svrd.teach.base import Deliver, Job


def conversation(job: Job) -> list[dict]:
    content: list[dict] = []
    if job.rec.get("image"):
        content.append({"type": "image", "image": open_png(job.rec["image"])})
    content.append({"type": "text", "text": job.prompt})
    return [{"role": "user", "content": content}]


class HFBackend:
    name = "hf"
    cacheable = True

    def __init__(self, cfg):
        if not cfg.model:
            raise SvrdError("teach.backend=hf needs teach.model: a Hub id or a local folder")
        self.cfg = cfg
        self.model = str(cfg.model)
        self.requests = 0
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            import torch
            from transformers import AutoModelForImageTextToText, AutoProcessor

            kwargs = {"dtype": torch.float32}
            if torch.cuda.is_available():
                kwargs = {"dtype": torch.bfloat16, "device_map": "auto"}
            processor = AutoProcessor.from_pretrained(self.model)
            processor.tokenizer.padding_side = "left"
            if processor.tokenizer.pad_token is None:
                processor.tokenizer.pad_token = processor.tokenizer.eos_token
            model = AutoModelForImageTextToText.from_pretrained(self.model, **kwargs).eval()
            self._loaded = (processor, model)
        return self._loaded

    def _generate_batch(self, batch: list[Job], seed: int) -> list[str]:
        import torch

        processor, model = self._load()
        inputs = processor.apply_chat_template(
            [conversation(job) for job in batch],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True},
        ).to(model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        temperature = float(self.cfg.temperature)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        tok = processor.tokenizer
        if temperature > 0:
            torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=int(self.cfg.max_new_tokens),
                pad_token_id=tok.pad_token_id,
                **sampling,
            )
        new = out[:, inputs["input_ids"].shape[1]:]
        return processor.batch_decode(new, skip_special_tokens=True)

    def generate(self, jobs: list[Job], deliver: Deliver) -> None:
        size = max(1, int(self.cfg.batch_size))
        # Batches hold questions that all have an image, or all have none.
        groups = [[j for j in jobs if j.rec.get("image")], [j for j in jobs if not j.rec.get("image")]]
        for group in groups:
            for i in range(0, len(group), size):
                batch = group[i : i + size]
                seed = batch[0].sample * 1_000_003 + i
                texts = self._generate_batch(batch, seed)
                for job, text in zip(batch, texts, strict=True):
                    self.requests += 1
                    deliver(job, text.strip())

    def close(self) -> None:
        self._loaded = None
