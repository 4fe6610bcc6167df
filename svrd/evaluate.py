"""The score stage's work: score each model's predictions, check leakage, write metrics,
plots data and the report. (Scoring itself is svrd.scoring, shared with `svrd score`.)

Outputs, one entry or file per model of infer.models (any number; a model without predictions
is reported and skipped):
- metrics/scores.json: {model: {group: {acc, correct, total}, unparseable, missing, out_of_range,
  quality: {...}, likelihood: {...} (infer.mode=likelihood only)}}: numbers only, at most three
  levels deep, so `dvc metrics diff` lists e.g. `distilled.topic/physics.acc`;
- metrics/plots/topics/<model>.json (accuracy per topic), metrics/plots/confusion/<model>.json
  (gold against predicted letter, "none" for no answer);
- metrics/disagreements/<model>.json: {"reasoning_vs_conclusion": [...], "likelihood_vs_text": [...]};
- metrics/report.md: Table 1 with sizes and inference minutes (from metrics/infer/<model>.json),
  the official breakdown, rationale quality, inference details, likelihood against text;
- metrics/open.json: with score.open set, the paper's Table 2 (svrd.open_scoring, as `svrd score-open`):
  {name: {n, bleu, rouge1, rouge2, rougeL, bertscore_p, bertscore_r, bertscore_f1}} for each file of
  score.open.predictions against score.open.references, and the same table at the end of the report.
  With score.open null (the default) it is `{}` (a DVC output must exist) and the report is unchanged.
"""

from __future__ import annotations

from pathlib import Path

from svrd.errors import LeakageError, SvrdError
from svrd.io import read_json, read_rows, write_json, write_text
from svrd.open_scoring import pair_up, read_answers, score_open
from svrd.params import OPEN_DIR, ScoreOpenParams
from svrd.quality import rationale_quality
from svrd.rationale import parse_rationale
from svrd.records import LETTERS
from svrd.report import DASH, OPEN_COLUMNS, param_count_label, render_open_table, render_report
from svrd.scoring import confusion, score
from svrd.stage import INFER_DIR, METRICS, RATIONALES, SPLIT_DIR

PLOTS = METRICS / "plots"
OPEN_METRICS = METRICS / "open.json"


def check_not_trained_on(scored_pids: set[str]) -> None:
    """Fail loudly if a scored pid was in the training data or got a teacher rationale."""
    trained = {r["pid"] for r in read_rows(SPLIT_DIR / "train.parquet", ["pid"])}
    trained |= {r["pid"] for r in read_rows(SPLIT_DIR / "val.parquet", ["pid"])}
    if RATIONALES.exists():
        trained |= {r["pid"] for r in read_rows(RATIONALES, ["pid"])}
    leaked = sorted(scored_pids & trained)
    if leaked:
        raise LeakageError(f"score: {len(leaked)} scored pid(s) were trained on or taught, e.g. {leaked[:5]}")


def likelihood_agreement(problems: list[dict], preds: list[dict], max_examples: int = 5) -> tuple[dict, list[dict]]:
    """infer.mode=likelihood: the likelihood answer (`choice`) against the written conclusion
    (`choice_text`). `text_wrong_likelihood_right` is the paper's "reasoning-to-error": the
    rationale leads the model to the right option, its written conclusion names another (or none).
    Returns (flat counts and percentages, a few examples where the two differ)."""
    gold = {p["pid"]: int(p["answer"]) for p in problems}
    by_pid = {p["pid"]: p for p in problems}
    rows = [r for r in preds if r["pid"] in gold]
    differ = [r for r in rows if r.get("choice_text") != r["choice"]]
    text_scores = score(problems, {r["pid"]: r.get("choice_text") for r in rows})
    n = len(rows)
    metrics = {
        "questions": n,
        "differ": len(differ),
        "differ_pct": round(100.0 * len(differ) / n, 2) if n else None,
        "text_unparseable": sum(r.get("choice_text") is None for r in rows),
        "text_acc": text_scores["all"]["acc"],
        "text_wrong_likelihood_right": sum(r["choice"] == gold[r["pid"]] != r.get("choice_text") for r in rows),
        "text_right_likelihood_wrong": sum(r.get("choice_text") == gold[r["pid"]] != r["choice"] for r in rows),
    }
    examples = []
    for r in differ[:max_examples]:
        choices = by_pid[r["pid"]]["choices"]
        examples.append({
            "pid": r["pid"],
            "gold": _letter(gold[r["pid"]]),
            "likelihood_choice": _letter(r["choice"]),
            "text_choice": _letter(r.get("choice_text")),
            "option_logprobs": dict(zip(LETTERS[:len(choices)], r.get("option_logprobs") or [], strict=False)),
            "conclusion": parse_rationale(r.get("raw") or "").conclusion,
            "raw": r.get("raw"),
        })
    return metrics, examples


def _letter(index) -> str:
    return LETTERS[index] if index is not None and 0 <= int(index) < len(LETTERS) else "none"


def _inference_section(models: list[dict]) -> str:
    """Per model, from metrics/infer/<name>.json: what ran, its size and how long it took."""
    head = ["model", "weights", "parameters", "size", "mode", "questions", "resumed", "batch",
            "inference (min)", "questions/s", "tokens/s"]
    out = ["", "## Inference", "", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for m in models:
        st = m.get("stats") or {}
        minutes = None if m.get("inference_s") is None else round(m["inference_s"] / 60.0, 2)
        cells = [m["name"], st.get("model"), st.get("parameters"), m.get("size"), st.get("mode"),
                 st.get("questions"), st.get("resumed"), st.get("batch_size"), minutes,
                 st.get("questions_per_s"), st.get("tokens_per_s")]
        out.append("| " + " | ".join(DASH if c is None else str(c).replace("|", "\\|") for c in cells) + " |")
    out += ["", "Inference minutes are the generation time of all questions (rows resumed from an "
            "interrupted run count with their original time); sizes count every parameter."]
    lik = [m for m in models if m.get("likelihood")]
    if lik:
        head = ["model", "likelihood acc", "written-conclusion acc", "differ", "written unparseable",
                "written wrong, likelihood right", "written right, likelihood wrong"]
        out += ["", "## Likelihood answers against the written conclusions", "",
                "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for m in lik:
            q = m["likelihood"]
            cells = [m["name"], m["scores"]["all"]["acc"], q["text_acc"], f"{q['differ']}/{q['questions']}",
                     q["text_unparseable"], q["text_wrong_likelihood_right"], q["text_right_likelihood_wrong"]]
            out.append("| " + " | ".join(DASH if c is None else str(c) for c in cells) + " |")
        out += ["", "The likelihood answer is the option the model finds most probable right after its own "
                "<CONCLUSION> tag; \"written wrong, likelihood right\" is right reasoning with a wrong conclusion."]
    return "\n".join(out) + "\n"


def _open_answers(param: str, path: str) -> dict[str, str]:
    try:
        return read_answers(path)
    except SvrdError as exc:  # its message starts with the file; say which param named it
        raise SvrdError(f"{param}: {exc}") from None


def open_ended(cfg: ScoreOpenParams) -> tuple[list[dict], list[str]]:
    """Table 2: every score.open.predictions file against score.open.references, as `svrd score-open`
    scores them. Every file is read and checked before any metric is computed (BERTScore may take
    minutes), so a bad file fails at once, named with its param. Returns ([{"name", "open", "file"}], printed lines)."""
    model = cfg.bertscore_model
    if model and Path(model).exists() and not Path(model).resolve().is_relative_to(Path(OPEN_DIR).resolve()):
        # a Hub id is pinned by its name (a param); a local folder only by the stage's dep on data/open
        raise SvrdError(f"score.open.bertscore_model: {model} is a local folder outside {OPEN_DIR}/, which the score "
                        f"stage does not depend on (new weights there would not re-run it): move it under {OPEN_DIR}/")
    references = _open_answers("score.open.references", cfg.references)
    pairs = {}
    for name, path in cfg.predictions.items():
        param = f"score.open.predictions.{name}"
        answers = _open_answers(param, path)
        try:
            pairs[name] = pair_up(answers, references, path, cfg.references)
        except SvrdError as exc:
            raise SvrdError(f"{param}: {exc}") from None
    fix = f"set score.open.bertscore_model to a Hub id, a local folder under {OPEN_DIR}/, or null (BLEU and ROUGE only)"
    rows, lines = [], []
    for name, (_, hyps, refs) in pairs.items():
        metrics = score_open(hyps, refs, bertscore_model=model, **({"num_layers": cfg.bertscore_layers, "fix": fix,
                             "rescale_with_baseline": cfg.bertscore_rescale} if model else {}))
        rows.append({"name": name, "open": metrics, "file": cfg.predictions[name]})
        line = f"score-open {name}: BLEU {metrics['bleu']:.2f}, ROUGE-L {metrics['rougeL']:.2f}"
        if "bertscore_f1" in metrics:
            line += f", BERTScore F1 {metrics['bertscore_f1']:.2f}"
        lines.append(line + f" over {metrics['n']} answers of {cfg.references}")
    return rows, lines


def _open_section(rows: list[dict], references: str) -> str:
    files = ", ".join(f"{r['name']} = {r['file']}" for r in rows)
    return "\n" + render_open_table(rows) + f"\nAnswers ({files}) against {references}.\n"


def score_models(names: list[str], open_params: ScoreOpenParams | None = None) -> list[str]:
    """Score every model of `names` that has predictions (the others are reported and skipped);
    write metrics/scores.json (model -> group -> numbers), plots, disagreements and the report.
    With `open_params` (score.open) also Table 2, in metrics/open.json and the report."""
    open_rows, open_lines = open_ended(open_params) if open_params is not None else ([], [])
    problems = read_rows(SPLIT_DIR / "test.parquet")
    check_not_trained_on({p["pid"] for p in problems})
    by_pid = {p["pid"]: p for p in problems}
    all_scores, models, lines = {}, [], []
    for name in names:
        table = INFER_DIR / name / "predictions.parquet"
        if not table.exists():
            lines.append(f"score {name}: no predictions at {table}; skipped")
            continue
        preds = read_rows(table)
        choices = {r["pid"]: r["choice"] for r in preds}
        scores = score(problems, choices)
        quality = rationale_quality(
            [{**r, "choices": by_pid[r["pid"]]["choices"], "answer": by_pid[r["pid"]]["answer"],
              "solution": by_pid[r["pid"]]["solution"]} for r in preds if r["pid"] in by_pid]
        )
        stats_path = METRICS / "infer" / f"{name}.json"
        stats = read_json(stats_path) if stats_path.exists() else {}
        examples = {"reasoning_vs_conclusion": quality.pop("examples", [])}
        entry = {**scores, "quality": quality}
        likelihood = None
        if any(r.get("mode") == "likelihood" for r in preds):
            likelihood, examples["likelihood_vs_text"] = likelihood_agreement(problems, preds)
            entry["likelihood"] = likelihood
        write_json(METRICS / "disagreements" / f"{name}.json", examples)
        all_scores[name] = entry
        params = stats.get("parameters")
        models.append({"name": name, "size": None if params is None else param_count_label(params), "scores": scores,
                       "inference_s": stats.get("generate_s"), "quality": quality, "stats": stats,
                       "likelihood": likelihood})
        # One file per model: `dvc plots show` draws one chart each.
        write_json(PLOTS / "topics" / f"{name}.json",
                   [{"topic": k.split("/", 1)[1], "acc": v["acc"]} for k, v in scores.items() if k.startswith("topic/")])
        write_json(PLOTS / "confusion" / f"{name}.json", confusion(problems, choices))
        line = (f"score {name}: {scores['all']['acc']:.2f}% of {scores['all']['total']} "
                f"({scores['unparseable']} unparseable)")
        if likelihood is not None:
            line += (f"; written conclusion {likelihood['text_acc']}%, differs on {likelihood['differ']}, "
                     f"{likelihood['text_wrong_likelihood_right']} right reasoning with a wrong conclusion")
        lines.append(line)
    if not models:
        raise SvrdError(f"score: no predictions for any of {names}: run the infer stages first")
    write_json(METRICS / "scores.json", all_scores)
    # Numbers only, two levels (name -> metric), for `dvc metrics diff`; the encoder is named in the report.
    write_json(OPEN_METRICS, {r["name"]: {k: r["open"][k] for k in ("n", *OPEN_COLUMNS) if k in r["open"]}
                              for r in open_rows})
    report = render_report(models) + _inference_section(models)
    if open_rows:
        report += _open_section(open_rows, open_params.references)
    write_text(METRICS / "report.md", report)
    return lines + open_lines
