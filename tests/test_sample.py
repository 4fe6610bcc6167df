"""The embedded sample dataset generator (svrd.sample): layout, determinism, validity, CLI."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from svrd import cli
from svrd.records import LETTERS, SCIENCEQA_FIELDS, validate_record
from svrd.sample import FAMILIES, FIRST_PID, generate

PER_FAMILY = 10


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sample") / "scienceqa"
    summary = generate(out, per_family=PER_FAMILY, seed=0)
    return out, summary


def _load(out: Path):
    problems = json.loads((out / "problems.json").read_text(encoding="utf-8"))
    splits = json.loads((out / "pid_splits.json").read_text(encoding="utf-8"))
    captions = json.loads((out / "captions.json").read_text(encoding="utf-8"))
    return problems, splits, captions


def test_deterministic_byte_identical(sample, tmp_path):
    out, _ = sample
    again = tmp_path / "again"
    generate(again, per_family=PER_FAMILY, seed=0)
    assert _hashes(out) == _hashes(again)
    other = tmp_path / "other_seed"
    generate(other, per_family=PER_FAMILY, seed=1)
    assert _hashes(other)["problems.json"] != _hashes(out)["problems.json"]


def test_release_layout_readable(sample):
    out, summary = sample
    problems, splits, captions = _load(out)
    n = PER_FAMILY * len(FAMILIES)
    assert summary["problems"] == len(problems) == n
    assert sorted(problems, key=int) == [str(FIRST_PID + i) for i in range(n)]
    assert set(captions) == {"captions"} and set(captions["captions"]) == set(problems)
    for pid, rec in problems.items():
        assert set(rec) == set(SCIENCEQA_FIELDS) | {"split"}
        assert rec["image"] == "image.png"
        assert captions["captions"][pid].strip()
        path = out / "images" / rec["split"] / pid / "image.png"
        assert path.is_file()
        with Image.open(path) as img:
            assert img.format == "PNG" and img.mode == "RGB"
            img.load()
            assert img.size == (128, 128)
    # nothing else under images/
    assert len(list((out / "images").rglob("*.png"))) == n


def test_records_valid(sample):
    out, _ = sample
    problems, _, captions = _load(out)
    for pid, rec in problems.items():
        norm = validate_record({**rec, "pid": pid, "caption": captions["captions"][pid]})
        assert norm["choices"][norm["answer"]]
        assert 2 <= len(norm["choices"]) <= 5
        # the solution names the right option
        assert norm["choices"][norm["answer"]].split(";")[-1].strip().lower() in norm["solution"].lower()


def test_splits_disjoint_and_cover(sample):
    out, summary = sample
    problems, splits, _ = _load(out)
    assert set(splits) == {"train", "val", "test", "trainval", "minitrain", "minival", "minitest"}
    train, val, test = (set(splits[k]) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(problems)
    assert set(splits["trainval"]) == train | val
    for name in ("train", "val", "test"):
        assert set(splits[f"mini{name}"]) <= set(splits[name])
        assert all(problems[pid]["split"] == name for pid in splits[name])
    # 70 / 10 / 20 within every family
    for family in FAMILIES:
        counts = Counter(r["split"] for r in problems.values() if r["skill"] == family.skill)
        assert counts == {"train": 7, "val": 1, "test": 2}
    assert summary["splits"]["train"] == len(train)


def test_answer_letters_balanced(sample):
    out, _ = sample
    problems, _, _ = _load(out)
    by_n: dict[int, Counter] = {}
    for rec in problems.values():
        by_n.setdefault(len(rec["choices"]), Counter())[LETTERS[rec["answer"]]] += 1
    for n, counts in by_n.items():
        total = sum(counts.values())
        per_letter = [counts[letter] for letter in LETTERS[:n]]
        # rotated per family: letters differ by at most one per family
        assert max(per_letter) - min(per_letter) <= len(FAMILIES), (n, counts)
        assert sum(per_letter) == total


def test_families_have_own_metadata(sample):
    out, _ = sample
    problems, _, _ = _load(out)
    assert len({f.skill for f in FAMILIES}) == len(FAMILIES) >= 5
    for family in FAMILIES:
        recs = [r for r in problems.values() if r["skill"] == family.skill]
        assert len(recs) == PER_FAMILY
        assert {r["subject"] for r in recs} == {family.subject}
        assert all(r["grade"].startswith("grade") and r["lecture"] and r["solution"] for r in recs)


def test_atomic_replace(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    generate(out, per_family=2)
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["sample", str(out), "--per-family", "5", "--seed", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert "25 problems" in line and str(out) in line
    problems = json.loads((out / "problems.json").read_text(encoding="utf-8"))
    assert len(problems) == 25


def test_cli_rejects_bad_count(tmp_path, capsys):
    assert cli.main(["sample", str(tmp_path / "x"), "--per-family", "0"]) == 2
    assert "per_family" in capsys.readouterr().err


def test_no_two_questions_alike(tmp_path):
    """No question repeats another in what a student sees (question, options, hint, image pixels):
    a test question with a twin in train would be scored as held out. The key is computed here from
    the written files, independently of the generator's own check."""
    out = tmp_path / "s"
    generate(out, per_family=60, seed=0)
    problems, _, _ = _load(out)
    keys = Counter()
    for pid, rec in problems.items():
        with Image.open(out / "images" / rec["split"] / pid / "image.png") as img:
            pixels = hashlib.sha256(img.convert("RGB").tobytes()).hexdigest()
        keys[(rec["question"], tuple(sorted(rec["choices"])), rec["hint"], pixels)] += 1
    assert max(keys.values()) == 1, [k[0] for k, n in keys.items() if n > 1][:3]


def test_a_family_that_repeats_itself_is_redrawn_then_refused():
    """A family with only two distinct questions: two are drawn (the second after redraws), and the
    third cannot be, which is an error naming the family rather than a silent twin."""
    import random as _random

    from svrd.errors import SvrdError
    from svrd.sample import build_records
    from svrd.sample.families import Family, make_magnets

    def two_kinds(rng):
        return make_magnets(_random.Random(rng.random() < 0.5))  # seeds False/True: two items

    family = Family("twins", "natural science", "physics", "Magnets", "Twins", two_kinds)
    rows = list(build_records(2, 0, (family,)))
    assert len({r[3] for r in rows}) == 2
    with pytest.raises(SvrdError, match="twins"):
        list(build_records(3, 0, (family,)))


def test_each_particle_sits_inside_one_patch_of_the_students_grid():
    """The beakers' particles are counted from the 128-px image's 16-px patches (tiny.patch_size): every
    particle lies wholly inside one patch, and the particles found in the pixels (connected blobs of the
    particle colour, left half Solution A) are the caption's counts. Read from the pixels, not the drawer."""
    import random
    import re

    import numpy as np
    from scipy import ndimage

    from svrd.sample.draw import COLOURS
    from svrd.sample.families import make_concentration

    rng = random.Random(7)
    for _ in range(40):
        item = make_concentration(rng)
        a, b = (int(k) for k in re.findall(r"has (\d+) ", item.caption))
        colour = re.search(r"\d+ (\w+) particle", item.caption).group(1)
        pixels = np.asarray(item.image.convert("RGB")).astype(int)
        assert pixels.shape[:2] == (128, 128)
        mask = (np.abs(pixels - np.array(COLOURS[colour])).sum(axis=2) < 30)
        blobs, n = ndimage.label(mask)
        found = {"A": 0, "B": 0}
        for box in ndimage.find_objects(blobs):
            ys, xs = box
            assert ys.start // 16 == (ys.stop - 1) // 16 and xs.start // 16 == (xs.stop - 1) // 16, item.caption
            found["A" if xs.start < 64 else "B"] += 1
        assert (found["A"], found["B"]) == (a, b), item.caption


def test_food_web_arrows_found_in_the_pixels_are_the_captions_and_decide_the_answer():
    """The food webs are read from the 16-px patches: every organism's disc lies wholly inside one patch,
    the arrows found in the pixels (dark pixels a third and two thirds of the way between two discs of
    adjacent levels, where no other arrow passes) are exactly the caption's, and following them from the
    question's organism reaches the right option and not the other. Read from the pixels, not the drawer."""
    import random
    import re

    import numpy as np
    from scipy import ndimage

    from svrd.sample.draw import COLOURS
    from svrd.sample.families import ECOSYSTEMS, make_food_web

    rng = random.Random(11)
    kinds = Counter()
    for _ in range(200):
        item = make_food_web(rng)
        eco = re.search(r"from a (\w+) ecosystem", item.hint).group(1)
        pixels = np.asarray(item.image.convert("RGB")).astype(int)
        centre = {}
        for name, colour in ECOSYSTEMS[eco]:
            blobs, n = ndimage.label(np.abs(pixels - np.array(COLOURS[colour])).sum(axis=2) < 30)
            sizes = ndimage.sum(blobs > 0, blobs, range(1, n + 1))
            ys, xs = ndimage.find_objects(blobs)[int(np.argmax(sizes))]
            assert ys.start // 16 == (ys.stop - 1) // 16 and xs.start // 16 == (xs.stop - 1) // 16, (name, item.caption)
            centre[name] = ((xs.start + xs.stop - 1) / 2, (ys.start + ys.stop - 1) / 2)
        names = [n for n, _ in ECOSYSTEMS[eco]]
        dark = pixels.sum(axis=2) < 200
        found = set()
        for low in range(4):
            for high in (2 * (low // 2) + 2, 2 * (low // 2) + 3):
                (x0, y0), (x1, y1) = centre[names[low]], centre[names[high]]
                points = [(round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0))) for t in (1 / 3, 2 / 3)]
                if all(dark[y - 1:y + 2, x - 1:x + 2].any() for x, y in points):
                    found.add((names[low], names[high]))
        listed = set(re.findall(r"(\w+) to (\w+)", item.caption.split("Arrows point from")[1]))
        assert found == listed, item.caption

        source = re.search(r"part of the (\w+)\?", item.question).group(1)
        reached, frontier = set(), {source}
        while frontier:
            frontier = {b for a, b in listed if a in frontier} - reached
            reached |= frontier
        assert item.correct in reached and item.distractors[0] not in reached, (item.question, item.caption)
        kinds[(source, names.index(item.correct) % 2)] += 1
    # Which side the answer is on is not given by the question: every organism asked about leads to the
    # left and to the right option.
    assert all(kinds[(s, 0)] and kinds[(s, 1)] for s, _ in kinds), kinds


def test_each_bar_is_a_whole_number_of_patches_and_the_caption_reads_them():
    """A bar graph's two bars stand for the months asked about in calendar order, each a whole number of
    16-px patches tall: heights found in the pixels, times the scale's step, are the caption's values,
    and the right option is the taller bar's month (only the highest is asked)."""
    import io
    import re

    import numpy as np
    from scipy import ndimage

    from svrd.sample import build_records
    from svrd.sample.draw import COLOURS
    from svrd.sample.families import MONTHS

    step = {"°C": 5, "mm": 50}  # the graphs' scales: 5 °C or 50 mm a patch
    seen = 0
    for _, rec, caption, png in build_records(40, 3):
        if rec["topic"] != "earth-science":
            continue
        seen += 1
        unit = "°C" if "°C" in caption else "mm"
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        colour = COLOURS["red"] if unit == "°C" else COLOURS["blue"]
        blobs, _ = ndimage.label(np.abs(pixels - np.array(colour)).sum(axis=2) < 30)
        bars = sorted(ndimage.find_objects(blobs), key=lambda box: box[1].start)
        heights = [(ys.stop - ys.start) / 16 for ys, _ in bars]
        assert len(bars) == 2 and all(h == int(h) for h in heights), (caption, heights)
        facts = re.findall(r"(\w+) has (\d+) ?(?:°C|mm)", caption)
        assert [m for m, _ in facts] == sorted(rec["choices"], key=MONTHS.index), (caption, rec["choices"])
        assert [int(v) for _, v in facts] == [int(h) * step[unit] for h in heights], caption
        taller = facts[heights.index(max(heights))][0]
        assert rec["choices"][rec["answer"]] == taller, (caption, rec["answer"])
    assert seen == 40
