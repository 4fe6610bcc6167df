"""Benchmark: the filter and split stages on a full-size ScienceQA-shaped release.

    .venv/bin/python -m benchmarks.filter_split_fullsize [--quick] [--image-side PX] [--noise N] [--profile] [--json]

1. Builds, in a temporary folder, a release in ScienceQA's layout with the real sizes: 21,208
   problems in problems.json (train 12,726 / val 4,241 / test 4,241, in each record's `split`
   field and in pid_splits.json), 10,000 of them with an image. The questions and images are
   drawn by svrd.sample (a pool of `--pool-per-family` questions per family), then replicated
   under pids "1".."21208"; every replicated image gets a stamp of its pid in its pixels, so no
   two image files are byte-identical (identical bytes would flatter Parquet's compression).
   `--image-side` scales the drawn 128 px images up (nearest neighbour) to approach the sizes
   of real ScienceQA figures, and `--noise` makes their PNG bytes photo-like (320 px with noise 3
   gives ~125 KiB an image, ~1.2 GiB for 10,000: roughly the real release's image folder).
   Building is not measured (its time is printed apart).
2. Runs what `dvc repro filter split` runs, each stage in a fresh child process as DVC does:
   filter (svrd.filter.filter_records over svrd.sources.iter_release, images only, every record
   validated and its image normalized to RGB PNG) and split (svrd.split.split_file official,
   streaming batch by batch, with no max_* caps: the largest output). Wall time is each child's whole life (interpreter start and imports included, as a
   stage pays them); peak memory is each child's own ru_maxrss.

Targets (2 cores): filter + split under 2 minutes and under 2 GiB peak. `--profile` runs each
child under cProfile and prints where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import GIB, MIB, ROWS_MARKER, format_table, machine_line, peak_rss_bytes, row  # noqa: E402

FULL = {"problems": 21_208, "images": 10_000, "train": 12_726, "val": 4_241, "test": 4_241}
QUICK = {"problems": 300, "images": 150, "train": 180, "val": 60, "test": 60}
PNG_LEVEL_ENV = "SVRD_BENCH_PNG_LEVEL"
TARGET_SECONDS = 120.0
TARGET_BYTES = 2 * GIB
SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------ the release

def _png(img, level: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def _stamp(img, pid: int, noise: int = 0):
    """A copy of `img` with the pid written into its top-left pixels (unique bytes per file), and
    with `noise` > 0 seeded uniform noise of +-noise levels per channel (photo-like PNG sizes)."""
    if noise > 0:
        import numpy as np
        from PIL import Image

        arr = np.asarray(img, dtype=np.int16)
        arr = arr + np.random.default_rng(pid).integers(-noise, noise + 1, arr.shape, dtype=np.int16)
        out = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    else:
        out = img.copy()
    px = out.load()
    for k in range(4):
        byte = (pid >> (8 * k)) & 0xFF
        px[k, 0] = (byte, 255 - byte, (byte * 7) & 0xFF)
    return out


def build_release(out_dir: Path, sizes: dict, seed: int = 0, pool_per_family: int = 200,
                  image_side: int | None = None, noise: int = 0) -> dict:
    """Write a ScienceQA-shaped release of `sizes` to out_dir; returns what was written."""
    from PIL import Image

    from svrd.sample import FAMILIES, generate

    if sizes["train"] + sizes["val"] + sizes["test"] != sizes["problems"]:
        raise ValueError(f"split sizes do not add up to {sizes['problems']}: {sizes}")
    t0 = time.perf_counter()
    pool_dir = out_dir.parent / f"{out_dir.name}-pool"
    per_family = max(1, min(pool_per_family, math.ceil(sizes["images"] / len(FAMILIES))))
    generate(pool_dir, per_family=per_family, seed=seed)
    pool_problems = json.loads((pool_dir / "problems.json").read_text(encoding="utf-8"))
    pool_captions = json.loads((pool_dir / "captions.json").read_text(encoding="utf-8"))["captions"]
    pool = []
    for pid, rec in pool_problems.items():
        with Image.open(pool_dir / "images" / rec["split"] / pid / rec["image"]) as img:
            img = img.convert("RGB")
            if image_side and image_side != max(img.size):
                scale = image_side / max(img.size)
                img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.NEAREST)
            pool.append((rec, pool_captions.get(pid, ""), img))
    t_pool = time.perf_counter() - t0

    rng = random.Random(f"svrd-bench:{seed}")
    n = sizes["problems"]
    split_of = [s for s in SPLITS for _ in range(sizes[s])]
    rng.shuffle(split_of)
    with_image = set(rng.sample(range(n), sizes["images"]))
    problems: dict[str, dict] = {}
    captions: dict[str, str] = {}
    pid_splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    image_bytes = 0
    out_dir.mkdir(parents=True)
    for i in range(n):
        pid = str(i + 1)  # real ScienceQA pids are "1".."21208"
        template, caption, img = pool[i % len(pool)]
        rec = dict(template, split=split_of[i])
        if i in with_image:
            rec["image"] = "image.png"
            folder = out_dir / "images" / rec["split"] / pid
            folder.mkdir(parents=True)
            data = _png(_stamp(img, i + 1, noise), 1 if noise else 6)  # the input files' level hardly matters
            (folder / "image.png").write_bytes(data)
            image_bytes += len(data)
            captions[pid] = caption
        else:
            rec["image"] = None  # a text-only question: filter drops it unvalidated
        problems[pid] = rec
        pid_splits[rec["split"]].append(pid)
    pid_splits["trainval"] = pid_splits["train"] + pid_splits["val"]
    (out_dir / "problems.json").write_text(json.dumps(problems, indent=2, ensure_ascii=False), encoding="utf-8")
    (out_dir / "pid_splits.json").write_text(json.dumps(pid_splits), encoding="utf-8")
    (out_dir / "captions.json").write_text(json.dumps({"captions": captions}), encoding="utf-8")
    return {
        "problems": n, "images": len(with_image), "splits": {s: len(pid_splits[s]) for s in SPLITS},
        "image_bytes": image_bytes, "image_side": max(pool[0][2].size), "noise": noise, "pool": len(pool),
        "pool_seconds": t_pool, "seconds": time.perf_counter() - t0,
        "problems_json_bytes": (out_dir / "problems.json").stat().st_size,
    }


# ------------------------------------------------------------------------------ the children

def _child_filter(release: Path, work: Path) -> dict:
    from svrd.filter import filter_records
    from svrd.sources import count_release, iter_release

    summary = filter_records(iter_release(release), work / "filtered.parquet", work / "rejects.jsonl",
                             images_only=True, on_invalid="error", total=count_release(release))
    return {"line": summary.line(), "kept": summary.kept,
            "table_bytes": (work / "filtered.parquet").stat().st_size}


def _child_split(work: Path) -> dict:
    from svrd.split import split_file

    return {"counts": split_file(work / "filtered.parquet", work / "split", "official")}


def child_main(argv: list[str]) -> int:
    """`--child filter RELEASE WORK [--profile]` / `--child split WORK [--profile]`: one JSON line."""
    stage, *paths = [a for a in argv if a != "--profile"]
    profile = "--profile" in argv
    imports0 = time.perf_counter()
    import svrd.filter  # noqa: F401  (imports are part of the stage; timed apart)
    import svrd.images
    import svrd.sources  # noqa: F401
    import svrd.split  # noqa: F401

    imports_s = time.perf_counter() - imports0
    level = os.environ.get(PNG_LEVEL_ENV)
    if level:  # a proposed change, measured without editing svrd: filter's PNG re-encoding at this zlib level
        def png_bytes(img, _level=int(level)) -> bytes:
            return _png(img, _level)

        svrd.images.png_bytes = png_bytes
    rss_after_imports = peak_rss_bytes()
    work = (lambda: _child_filter(Path(paths[0]), Path(paths[1]))) if stage == "filter" else \
        (lambda: _child_split(Path(paths[0])))
    profiler = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    result = work()
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - t0
    out = {"stage": stage, "seconds": seconds, "imports_s": imports_s, "peak_rss": peak_rss_bytes(),
           "rss_after_imports": rss_after_imports, **result}
    if profiler:
        buf = io.StringIO()
        stats = pstats.Stats(profiler, stream=buf).strip_dirs().sort_stats("cumulative")
        stats.print_stats(18)
        buf.write("\n-- by own time --\n")
        stats.sort_stats("tottime").print_stats(12)
        out["profile"] = buf.getvalue()
    print(ROWS_MARKER + json.dumps(out), flush=True)
    return 0


def run_child(args: list[str], profile: bool = False, png_level: int | None = None) -> dict:
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(PNG_LEVEL_ENV, None)
    if png_level is not None:
        env[PNG_LEVEL_ENV] = str(png_level)
    cmd = [sys.executable, "-m", "benchmarks.filter_split_fullsize", "--child", *args] + (["--profile"] if profile else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child {' '.join(args[:1])} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(ROWS_MARKER))
    return {**json.loads(line[len(ROWS_MARKER):]), "process_wall": wall}


# ------------------------------------------------------------------------------ the benchmark

def measure(sizes: dict, image_side: int | None = None, noise: int = 0, profile: bool = False, seed: int = 0,
            keep: Path | None = None, verbose: bool = True, compare_png_level: int | None = None) -> dict:
    say = print if verbose else (lambda *a, **k: None)
    with tempfile.TemporaryDirectory(prefix="svrd-bench-") as tmp:
        base = keep or Path(tmp)
        release, work = base / "release", base / "work"
        built = build_release(release, sizes, seed=seed, image_side=image_side, noise=noise)
        say(f"built the release in {built['seconds']:.1f} s (not measured; drawing the pool of {built['pool']} "
            f"questions: {built['pool_seconds']:.1f} s): {built['problems']} problems "
            f"(train {built['splits']['train']} / val {built['splits']['val']} / test {built['splits']['test']}), "
            f"{built['images']} images of {built['image_side']} px (noise {built['noise']}), "
            f"{built['image_bytes'] / MIB:.1f} MiB of PNG ({built['image_bytes'] / max(1, built['images']) / 1024:.0f} KiB "
            f"each), "
            f"problems.json {built['problems_json_bytes'] / MIB:.1f} MiB", flush=True)
        filt = run_child(["filter", str(release), str(work)], profile)
        split = run_child(["split", str(work)], profile)
        variant = None
        if compare_png_level is not None:  # the same release, right after: the two sides of the ratio
            variant = run_child(["filter", str(release), str(base / "work-variant")], False, compare_png_level)
    wall = filt["process_wall"] + split["process_wall"]
    peak = max(filt["peak_rss"], split["peak_rss"])
    for r in (filt, split):
        say(f"  {r['stage']:>6}: {r['process_wall']:6.1f} s in its process ({r['imports_s']:.1f} s imports, "
            f"{r['seconds']:.1f} s work), peak RSS {r['peak_rss'] / MIB:7.1f} MiB "
            f"({r['rss_after_imports'] / MIB:.0f} MiB after imports)")
    say(f"  {filt['line']}; filtered table {filt['table_bytes'] / MIB:.1f} MiB; split {split['counts']}")
    say(f"  filter + split: {wall:.1f} s, peak {peak / MIB:.0f} MiB (targets: < {TARGET_SECONDS:.0f} s, "
        f"< {TARGET_BYTES / GIB:.0f} GiB)")
    if variant is not None:
        say(f"  variant: filter with PNG compress_level={compare_png_level} (svrd uses Pillow's default, 6): "
            f"{variant['process_wall']:.1f} s ({filt['process_wall'] / variant['process_wall']:.2f}x faster), "
            f"peak {variant['peak_rss'] / MIB:.0f} MiB, table {variant['table_bytes'] / MIB:.1f} MiB "
            f"(vs {filt['table_bytes'] / MIB:.1f} MiB)")
    if profile:
        for r in (filt, split):
            say(f"\n===== cProfile: {r['stage']} =====\n{r['profile']}")
    return {"built": built, "filter": filt, "split": split, "wall": wall, "peak": peak, "variant": variant}


def run(quick: bool = False, image_side: int | None = None, noise: int = 0, profile: bool = False,
        compare_png_level: int | None = None) -> list[dict]:
    sizes = QUICK if quick else FULL
    m = measure(sizes, image_side=image_side, noise=noise, profile=profile, compare_png_level=compare_png_level)
    judged = not quick
    b = m["built"]
    size = (f"{sizes['problems']} problems, {sizes['images']} images of {b['image_side']} px, "
            f"{b['image_bytes'] / max(1, b['images']) / 1024:.0f} KiB")
    note = (f"{'QUICK ' if quick else ''}{size}; filter {m['filter']['process_wall']:.1f} s + split "
            f"{m['split']['process_wall']:.1f} s")
    mem_note = (f"{'QUICK ' if quick else ''}{size}; filter {m['filter']['peak_rss'] / MIB:.0f} MiB, "
                f"split {m['split']['peak_rss'] / MIB:.0f} MiB")
    rows = [
        row("filter_split.wall", round(m["wall"], 2), TARGET_SECONDS, round(m["wall"] / TARGET_SECONDS, 3),
            f"< {TARGET_SECONDS:.0f} s", "s", note, (m["wall"] < TARGET_SECONDS) if judged else None),
        row("filter_split.peak_rss", round(m["peak"] / MIB, 1), TARGET_BYTES / MIB, round(m["peak"] / TARGET_BYTES, 3),
            f"< {TARGET_BYTES / GIB:.0f} GiB", "MiB", mem_note, (m["peak"] < TARGET_BYTES) if judged else None),
    ]
    v = m["variant"]
    if v is not None:
        rows.append(row(f"filter.png_level_{compare_png_level}", round(v["process_wall"], 2),
                        round(m["filter"]["process_wall"], 2), round(m["filter"]["process_wall"] / v["process_wall"], 2),
                        "speed-up (proposal)", "s",
                        f"filter alone, PNG level {compare_png_level} vs 6; table "
                        f"{v['table_bytes'] / MIB:.0f} vs {m['filter']['table_bytes'] / MIB:.0f} MiB"))
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK['problems']} problems (a smoke run)")
    parser.add_argument("--image-side", type=int, default=None,
                        help="scale the drawn images to this many pixels on their long side (default: as drawn)")
    parser.add_argument("--noise", type=int, default=0,
                        help="add +-N levels of seeded noise per pixel: photo-like PNG sizes "
                             "(320 px with noise 3: ~125 KiB an image; default 0: flat drawings, ~2 KiB)")
    parser.add_argument("--compare-png-level", type=int, default=None, metavar="LEVEL",
                        help="also time filter with its PNG re-encoding at this zlib level (a proposal), same run")
    parser.add_argument("--profile", action="store_true", help="cProfile each stage and print the top functions")
    parser.add_argument("--json", action="store_true", help=f"also print one line '{ROWS_MARKER.strip()} <json>'")
    args = parser.parse_args(argv)
    print(machine_line(), flush=True)
    rows = run(args.quick, args.image_side, args.noise, args.profile, args.compare_png_level)
    print(format_table(rows))
    print(machine_line())  # the load may have changed while it ran
    if args.json:
        print(ROWS_MARKER + json.dumps(rows), flush=True)
    return 0 if all(r.get("passed") is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
