"""Open-ended answers scored against reference answers (the paper's Table 2, e.g. VQAonline).

`svrd score-open PREDICTIONS REFERENCES` reads two files of free-form answers keyed by id and
reports, over the ids of the references:
- BLEU: sacrebleu's corpus BLEU (default 13a tokenizer), 0-100;
- ROUGE-1, ROUGE-2, ROUGE-L: rouge-score's F1 (Porter stemming, as svrd.quality), mean x 100;
- BERTScore precision, recall, F1: the `bert-score` package (`pip install "svrd[open]"`), mean
  x 100, no idf weighting, not rescaled unless asked. Its model defaults to bert-score's own
  default for English, `roberta-large` at layer 17 (bert-score's tuned layer); a local folder
  works too, with `--bertscore-layers` (default: its last layer).

Input: each file is JSONL with one {"id": ..., "answer": "..."} per line, a JSON list of such
records, or one JSON object {id: answer}. LLaVA-style {"question_id", "text"} records are read
too. Ids are compared as strings. Every prediction id must be a reference id and every
reference must be predicted; a malformed file, a record without its id or answer, a non-text
answer or a repeated id is an error that names the file and the record.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svrd.errors import SvrdError
from svrd.io import write_json

ID_KEYS = ("id", "question_id")
ANSWER_KEYS = ("answer", "text")
FORMAT_HELP = 'JSONL of {"id": ..., "answer": "..."}, a JSON list of them, or a JSON object {id: answer}'
DEFAULT_BERTSCORE_MODEL = "roberta-large"  # bert-score's default for lang="en"


# ---------------------------------------------------------------- reading

def _bad(path: Path, why: str) -> SvrdError:
    return SvrdError(f"{path}: {why} (expected {FORMAT_HELP})")


def _pick(record: Mapping[str, Any], keys: tuple[str, ...], what: str, where: str, path: Path) -> Any:
    for key in keys:
        if key in record:
            return record[key]
    raise _bad(path, f"{where} has no {what} field ({' or '.join(map(repr, keys))}; has {sorted(record)})")


def _records(path: Path, text: str) -> list[tuple[str, Any, Any]]:
    """(where, id, answer) for every record, in file order."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        document = None
    if isinstance(document, dict) and not any(k in document for k in ID_KEYS):
        return [(f"id {key!r}", key, value) for key, value in document.items()]
    if isinstance(document, dict):
        document = [document]  # a one-line JSONL
    if isinstance(document, list):
        items = list(enumerate(document, 1))
        label = "record"
    else:
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise _bad(path, f"line {number} is not JSON ({exc.msg})") from None
        label = "line"
    out = []
    for number, record in items:
        where = f"{label} {number}"
        if not isinstance(record, dict):
            raise _bad(path, f"{where} is not a JSON object")
        out.append((where, _pick(record, ID_KEYS, "id", where, path), _pick(record, ANSWER_KEYS, "answer", where, path)))
    return out


def read_answers(path: str | Path) -> dict[str, str]:
    """id (as a string) -> answer text, from one predictions or references file."""
    path = Path(path)
    if not path.is_file():
        raise SvrdError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Excel CSV) is not content
    except UnicodeDecodeError:
        raise _bad(path, "not a UTF-8 text file") from None
    answers: dict[str, str] = {}
    for where, key, answer in _records(path, text):
        if isinstance(key, (dict, list, bool)) or key is None:
            raise _bad(path, f"{where}: id {key!r} is not a string or number")
        if not isinstance(answer, str):
            raise _bad(path, f"{where}: answer {answer!r} is not text")
        key = str(key)
        if key in answers:
            raise _bad(path, f"id {key!r} appears twice")
        answers[key] = answer
    if not answers:
        raise _bad(path, "no answers")
    return answers


def pair_up(predictions: Mapping[str, str], references: Mapping[str, str],
            pred_path: Any = "predictions", ref_path: Any = "references") -> tuple[list[str], list[str], list[str]]:
    """(ids, hypotheses, references) in the references' order; both files must hold the same ids."""
    extra = [k for k in predictions if k not in references]
    if extra:
        raise SvrdError(f"{pred_path}: {len(extra)} ids are not in {ref_path} (e.g. {extra[:3]})")
    missing = [k for k in references if k not in predictions]
    if missing:
        raise SvrdError(f"{pred_path}: {len(missing)} ids of {ref_path} have no prediction (e.g. {missing[:3]})")
    ids = list(references)
    return ids, [predictions[k] for k in ids], [references[k] for k in ids]


# ---------------------------------------------------------------- metrics

def bleu(hypotheses: list[str], references: list[str]) -> float:
    import sacrebleu

    return round(float(sacrebleu.corpus_bleu(hypotheses, [references]).score), 2)


def rouge(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 x 100."""
    from rouge_score import rouge_scorer

    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for hyp, ref in zip(hypotheses, references, strict=True):
        scores = scorer.score(ref, hyp)
        for kind in kinds:
            totals[kind] += scores[kind].fmeasure
    return {kind: round(100.0 * totals[kind] / len(hypotheses), 2) for kind in kinds}


def _bertscore_layers(model: str, num_layers: int | None) -> int | None:
    """bert-score's tuned layer for a model it knows; otherwise the given one, else the last."""
    if num_layers is not None:
        return num_layers
    from bert_score.utils import model2layers

    if model in model2layers:
        return model2layers[model]
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(model).num_hidden_layers)


def bertscore(hypotheses: list[str], references: list[str], model: str = DEFAULT_BERTSCORE_MODEL,
              num_layers: int | None = None, batch_size: int = 32, device: str | None = None,
              rescale_with_baseline: bool = False, fix: str | None = None) -> dict[str, Any]:
    """Mean BERTScore precision / recall / F1 x 100, with the model and layer used. `fix`, when given,
    replaces the error messages' advice (the CLI's flags; stage score names its params)."""
    try:
        import bert_score
    except ImportError:
        raise SvrdError(f'BERTScore needs the bert-score package: pip install "svrd[open]" ({fix or "or pass --no-bertscore"})') from None
    try:
        layers = _bertscore_layers(model, num_layers)
        with contextlib.redirect_stdout(sys.stderr):  # bert-score prints its warnings
            p, r, f = bert_score.score(
                hypotheses, references, model_type=model, num_layers=layers, batch_size=batch_size,
                device=device or ("cuda" if _cuda() else "cpu"), lang="en" if rescale_with_baseline else None,
                rescale_with_baseline=rescale_with_baseline,
            )
    except (OSError, ValueError) as exc:  # no such model folder / Hub id unreachable offline
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SvrdError(f"BERTScore model {model!r} could not be loaded ({first}); "
                        f"{fix or 'pass a local folder with --bertscore-model, or --no-bertscore'}") from None
    return {
        "bertscore_p": round(100.0 * float(p.mean()), 2),
        "bertscore_r": round(100.0 * float(r.mean()), 2),
        "bertscore_f1": round(100.0 * float(f.mean()), 2),
        "bertscore_model": model,
        "bertscore_layers": layers,
        "bertscore_rescaled": bool(rescale_with_baseline),
    }


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def score_open(hypotheses: list[str], references: list[str], bertscore_model: str | None = DEFAULT_BERTSCORE_MODEL,
               **bertscore_kwargs: Any) -> dict[str, Any]:
    """{"n", "bleu", "rouge1", "rouge2", "rougeL", "bertscore_*"}; BERTScore left out when the model is None."""
    if not hypotheses:
        raise SvrdError("nothing to score")
    out: dict[str, Any] = {"n": len(hypotheses), "bleu": bleu(hypotheses, references), **rouge(hypotheses, references)}
    if bertscore_model:
        out.update(bertscore(hypotheses, references, model=bertscore_model, **bertscore_kwargs))
    return out


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = f"Both files: {FORMAT_HELP}; ids compared as strings."
    parser.add_argument("predictions", help="the model's answers, keyed by id")
    parser.add_argument("references", help="the reference answers, keyed by the same ids")
    parser.add_argument("--name", default=None, help="the model's name in the table (default: the predictions file's name)")
    parser.add_argument("--bertscore-model", default=DEFAULT_BERTSCORE_MODEL,
                        help="Hub id or local folder of the BERTScore encoder (default: roberta-large, bert-score's English default)")
    parser.add_argument("--bertscore-layers", type=int, default=None,
                        help="layer whose embeddings are compared (default: bert-score's tuned layer, else the last)")
    parser.add_argument("--bertscore-rescale", action="store_true", help="rescale with bert-score's baseline (lang en)")
    parser.add_argument("--batch-size", type=int, default=32, help="BERTScore batch size")
    parser.add_argument("--device", default=None, help="BERTScore device (default: cuda when available, else cpu)")
    parser.add_argument("--no-bertscore", action="store_true", help="BLEU and ROUGE only")
    parser.add_argument("--out", default=None, help="also write the metrics JSON here")


def run(args: argparse.Namespace) -> int:
    from svrd.report import render_open_table

    predictions, references = read_answers(args.predictions), read_answers(args.references)
    _, hyps, refs = pair_up(predictions, references, args.predictions, args.references)
    metrics = score_open(
        hyps, refs, bertscore_model=None if args.no_bertscore else args.bertscore_model,
        **({} if args.no_bertscore else {
            "num_layers": args.bertscore_layers, "batch_size": args.batch_size, "device": args.device,
            "rescale_with_baseline": args.bertscore_rescale}),
    )
    if args.out:
        write_json(args.out, metrics)
    name = args.name or Path(args.predictions).stem
    sys.stdout.write(render_open_table([{"name": name, "open": metrics}]))
    return 0
