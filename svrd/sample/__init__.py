"""The embedded sample dataset: ScienceQA-format image questions drawn with Pillow.

`generate(out_dir)` writes ScienceQA's original release layout:

    out_dir/problems.json        {pid: record}: the 13 ScienceQA fields plus "split"
    out_dir/pid_splits.json      train, val, test, trainval, minitrain, minival, minitest
    out_dir/captions.json        {"captions": {pid: caption}}
    out_dir/images/{split}/{pid}/image.png

in task families modelled on real ScienceQA image skills (see svrd.sample.families). pids are
numeric strings from "100001" up, so they never collide with real ScienceQA pids (1-21208).
Output is deterministic: each question draws from its own random.Random seeded by
(seed, family, index), and the same arguments give byte-identical files.

CLI: `svrd sample OUT_DIR [--per-family N] [--seed S]`.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from svrd.errors import SvrdError
from svrd.io import atomic_dir
from svrd.records import LETTERS
from svrd.sample.draw import png_bytes
from svrd.sample.families import FAMILIES, TASK, Family, Item

__all__ = ["FAMILIES", "FIRST_PID", "SPLIT_FRACTIONS", "add_arguments", "build_records", "generate", "run"]

FIRST_PID = 100001
SPLIT_FRACTIONS = (("train", 0.7), ("val", 0.1), ("test", 0.2))
MINI_FRACTION = 0.1  # mini* splits: this share of each split (at least one pid when the split has any)


def _split_plan(family: Family, per_family: int, seed: int) -> list[str]:
    """Split of each question index of a family: 70/10/20, positions drawn by a seeded shuffle."""
    n_train = round(per_family * SPLIT_FRACTIONS[0][1])
    n_val = round(per_family * SPLIT_FRACTIONS[1][1])
    order = list(range(per_family))
    random.Random(f"svrd-sample:{seed}:{family.name}:splits").shuffle(order)
    splits = [""] * per_family
    for rank, index in enumerate(order):
        splits[index] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return splits


def _record(family: Family, item: Item, position: int, split: str) -> dict:
    """A ScienceQA record with the right option placed at `position` among the options."""
    choices = list(item.distractors)
    choices.insert(position, item.correct)
    return {
        "question": item.question,
        "choices": choices,
        "answer": position,
        "hint": item.hint,
        "image": "image.png",
        "task": TASK,
        "grade": item.grade,
        "subject": family.subject,
        "topic": family.topic,
        "category": family.category,
        "skill": family.skill,
        "lecture": item.lecture,
        "solution": item.solution,
        "split": split,
    }


def build_records(per_family: int = 180, seed: int = 0, families: tuple[Family, ...] = FAMILIES):
    """Yield (pid, record, caption, png_bytes) in pid order, families interleaved."""
    if per_family < 1:
        raise SvrdError(f"per_family must be at least 1, got {per_family}")
    plans = [_split_plan(f, per_family, seed) for f in families]
    placed: dict[tuple[int, int], int] = {}  # (family, number of options) -> questions so far
    drawn: set[str] = set()  # content of every question so far: no two questions are the same
    for index in range(per_family):
        for f_idx, family in enumerate(families):
            pid = str(FIRST_PID + index * len(families) + f_idx)
            rng, item, png = _unique_item(family, seed, index, drawn)
            n_choices = 1 + len(item.distractors)
            # Rotate the right option through the positions, separately for each number of
            # options, so letters are balanced within a family; the distractors are shuffled.
            rng.shuffle(item.distractors)
            seen = placed.get((f_idx, n_choices), 0)
            placed[(f_idx, n_choices)] = seen + 1
            position = (seen + f_idx) % n_choices
            yield pid, _record(family, item, position, plans[f_idx][index]), item.caption, png


MAX_DRAWS = 100


def _unique_item(family: Family, seed: int, index: int, drawn: set[str]):
    """The index-th question of a family, redrawn (from a seed that names the attempt) while a question
    with the same text, options, hint and image exists already: a twin of a training question in the
    test split would be scored as held out while the student has memorised it."""
    from svrd.split import content_key

    for attempt in range(MAX_DRAWS):
        tag = f"svrd-sample:{seed}:{family.name}:{index}" + (f":{attempt}" if attempt else "")
        rng = random.Random(tag)
        item = family.make(rng)
        png = png_bytes(item.image)
        key = content_key(item.question, [item.correct, *item.distractors], item.hint, png)
        if key not in drawn:
            drawn.add(key)
            return rng, item, png
    raise SvrdError(f"sample: family {family.name} has no new question after {MAX_DRAWS} draws at index {index}: "
                    f"lower data.sample.per_family")


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def generate(out_dir: str | Path, per_family: int = 180, seed: int = 0) -> dict:
    """Write the sample dataset in ScienceQA's release layout to out_dir (atomically) and return counts."""
    out_dir = Path(out_dir)
    problems: dict[str, dict] = {}
    captions: dict[str, str] = {}
    answers = dict.fromkeys(LETTERS, 0)
    with atomic_dir(out_dir) as tmp:
        for pid, rec, caption, png in build_records(per_family, seed):
            problems[pid] = rec
            captions[pid] = caption
            answers[LETTERS[rec["answer"]]] += 1
            img_dir = tmp / "images" / rec["split"] / pid
            img_dir.mkdir(parents=True)
            (img_dir / "image.png").write_bytes(png)
        splits: dict[str, list[str]] = {name: [] for name, _ in SPLIT_FRACTIONS}
        for pid, rec in problems.items():
            splits[rec["split"]].append(pid)
        splits["trainval"] = sorted(splits["train"] + splits["val"], key=int)
        for name, _ in SPLIT_FRACTIONS:
            pids = splits[name]
            k = min(len(pids), max(1, round(len(pids) * MINI_FRACTION))) if pids else 0
            mini = random.Random(f"svrd-sample:{seed}:mini{name}").sample(pids, k)
            splits[f"mini{name}"] = sorted(mini, key=int)
        _dump(tmp / "problems.json", problems)
        _dump(tmp / "pid_splits.json", splits)
        _dump(tmp / "captions.json", {"captions": captions})
    return {
        "out_dir": str(out_dir),
        "seed": seed,
        "per_family": per_family,
        "problems": len(problems),
        "families": {f.name: per_family for f in FAMILIES},
        "splits": {name: len(pids) for name, pids in splits.items()},
        "answers": {k: v for k, v in answers.items() if v},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="folder to write (replaced atomically if it exists)")
    parser.add_argument("--per-family", type=int, default=180, help="questions per task family (default 180)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def run(args: argparse.Namespace) -> int:
    summary = generate(args.out_dir, per_family=args.per_family, seed=args.seed)
    s = summary["splits"]
    print(f"svrd sample: wrote {summary['problems']} problems in {len(summary['families'])} families "
          f"(train {s['train']}, val {s['val']}, test {s['test']}) to {summary['out_dir']}")
    return 0
