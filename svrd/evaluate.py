"""The score stage's work: score each model's predictions, check leakage, write metrics,
plots data and the report. (Scoring itself is svrd.scoring, shared with `svrd score`.)"""

from __future__ import annotations

from svrd.errors import LeakageError
from svrd.io import read_json, read_rows, write_json, write_text
from svrd.quality import rationale_quality
from svrd.report import param_count_label, render_report
from svrd.scoring import confusion, score
from svrd.stage import INFER_DIR, METRICS, RATIONALES, SPLIT_DIR


PLOTS = METRICS / "plots"


def check_not_trained_on(scored_pids: set[str]) -> None:
    """Fail loudly if a scored pid was in the training data or got a teacher rationale."""
    trained = {r["pid"] for r in read_rows(SPLIT_DIR / "train.parquet", ["pid"])}
    trained |= {r["pid"] for r in read_rows(SPLIT_DIR / "val.parquet", ["pid"])}
    if RATIONALES.exists():
        trained |= {r["pid"] for r in read_rows(RATIONALES, ["pid"])}
    leaked = sorted(scored_pids & trained)
    if leaked:
        raise LeakageError(f"score: {len(leaked)} scored pid(s) were trained on or taught, e.g. {leaked[:5]}")


def score_models(names: list[str]) -> list[str]:
    problems = read_rows(SPLIT_DIR / "test.parquet")
    check_not_trained_on({p["pid"] for p in problems})
    by_pid = {p["pid"]: p for p in problems}
    all_scores, models, lines = {}, [], []
    for name in names:
        preds = read_rows(INFER_DIR / name / "predictions.parquet")
        scores = score(problems, {r["pid"]: r["choice"] for r in preds})
        quality = rationale_quality(
            [{**r, "choices": by_pid[r["pid"]]["choices"], "answer": by_pid[r["pid"]]["answer"],
              "solution": by_pid[r["pid"]]["solution"]} for r in preds if r["pid"] in by_pid]
        )
        stats = read_json(METRICS / "infer" / f"{name}.json")
        examples = quality.pop("examples", [])
        write_json(METRICS / "disagreements" / f"{name}.json", examples)
        all_scores[name] = {**scores, "quality": quality}
        models.append({"name": name, "size": param_count_label(stats["parameters"]), "scores": scores,
                       "inference_s": stats["generate_s"], "quality": quality})
        # One file per model: `dvc plots show` draws one chart each.
        write_json(PLOTS / "topics" / f"{name}.json",
                   [{"topic": k.split("/", 1)[1], "acc": v["acc"]} for k, v in scores.items() if k.startswith("topic/")])
        write_json(PLOTS / "confusion" / f"{name}.json", confusion(problems, {r["pid"]: r["choice"] for r in preds}))
        lines.append(f"score {name}: {scores['all']['acc']:.2f}% of {scores['all']['total']} "
                     f"({scores['unparseable']} unparseable)")
    write_json(METRICS / "scores.json", all_scores)
    write_text(METRICS / "report.md", render_report(models))
    return lines
