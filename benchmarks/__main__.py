"""Run every benchmark in benchmarks/ and print one table of results with the machine.

    .venv/bin/python -m benchmarks [--quick] [--only NAME [--only NAME ...]] [--budget 600] [--list]

Each benchmark runs in its own child process (so one's imports, threads and peak memory do not
touch another's, and a script that is broken or still being written fails alone):

- a module following the convention of benchmarks.common (a top-level `run(quick)`) runs as
  `python -m benchmarks --child NAME [--quick]`, which calls `run(quick)` and hands its rows back;
- any other script runs as `python -m benchmarks.NAME`, given `--quick` only when its source
  mentions that flag; its output is shown under a heading and its table row quotes the last
  two lines that state a ratio or a speed-up (and PASS/FAIL when they say so).

Every child's output streams as it comes. A total `--budget` (seconds, default 600) is shared:
each script may use what the ones before it left (at most `--timeout` each); a script past its
time is stopped and marked so. Exit status 1 when a target failed or a script did not finish.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOT_BENCHMARKS = {"__init__", "__main__", "common"}
RATIO_LINE = re.compile(r"\bratio\b|speed-?up", re.IGNORECASE)  # what a script's summary line says
TIMES_LINE = re.compile(r"\d(?:\.\d+)?x\b")  # a fallback: any "5.6x"


def discover() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in NOT_BENCHMARKS and not p.stem.startswith("_"))


def follows_convention(name: str) -> bool:
    """Whether benchmarks/NAME.py defines a top-level `run` (read without importing it)."""
    try:
        tree = ast.parse((HERE / f"{name}.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return False
    return any(isinstance(node, ast.FunctionDef) and node.name == "run" for node in tree.body)


def takes_quick(name: str) -> bool:
    try:
        return "--quick" in (HERE / f"{name}.py").read_text(encoding="utf-8")
    except OSError:
        return False


def child(name: str, quick: bool) -> int:
    """`--child NAME`: import benchmarks.NAME, call run(quick), print its table and its rows."""
    import importlib

    from benchmarks.common import ROWS_MARKER, format_table, machine_line

    print(machine_line(), flush=True)
    module = importlib.import_module(f"benchmarks.{name}")
    rows = module.run(quick=quick)
    print(format_table(rows))
    print(ROWS_MARKER + json.dumps(rows), flush=True)
    return 0


def _stream(proc: subprocess.Popen, lines: list[str]) -> None:
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        print(f"    {line}", end="", flush=True)


def run_script(name: str, quick: bool, timeout: float) -> dict:
    """Run one benchmark in a child process; what it printed, its rows (when it follows the
    convention), its status (ok, failed, timeout) and its wall time."""
    convention = follows_convention(name)
    if convention:
        cmd = [sys.executable, "-m", "benchmarks", "--child", name] + (["--quick"] if quick else [])
    else:
        cmd = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if quick and takes_quick(name) else [])
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1")
    lines: list[str] = []
    t0 = time.perf_counter()
    # A session of its own, so a timeout stops the script and whatever it started (its servers).
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    reader = threading.Thread(target=_stream, args=(proc, lines), daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
        status = "ok" if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        rc = proc.wait()
        status = "timeout"
    reader.join(timeout=5)
    wall = time.perf_counter() - t0
    rows = None
    if convention:
        from benchmarks.common import ROWS_MARKER

        marked = [ln for ln in lines if ln.startswith(ROWS_MARKER)]
        if marked:
            rows = json.loads(marked[-1][len(ROWS_MARKER):])
            if status == "failed" and rc == 1:
                status = "ok"  # the script ran; rc 1 says a target failed, which its rows show
    return {"name": name, "cmd": cmd, "convention": convention, "status": status, "rc": rc, "wall": wall,
            "lines": lines, "rows": rows}


def rows_of(result: dict, quick: bool) -> list[dict]:
    """Table rows for one script's result (its own rows, or one row quoting its output)."""
    from benchmarks.common import ROWS_MARKER, row

    if result["rows"] is not None:
        return result["rows"]
    if result["status"] == "timeout":
        return [row(result["name"], None, None, None, "-", "-", f"TIMEOUT after {result['wall']:.0f} s", False)]
    output = [ln for ln in result["lines"] if not ln.startswith(ROWS_MARKER)]
    if result["status"] != "ok":
        last = next((ln.strip() for ln in reversed(output) if ln.strip()), "")
        return [row(result["name"], None, None, None, "-", "-", f"FAILED rc {result['rc']}: {last[:120]}", False)]
    said = " | ".join([ln.strip() for ln in output if RATIO_LINE.search(ln)][-2:]) or next(
        (ln.strip() for ln in reversed(output) if TIMES_LINE.search(ln)), "see its output above")
    passed = True if "PASS" in said else False if "FAIL" in said else None
    flag = "" if (not quick or takes_quick(result["name"])) else " (no --quick: full run)"
    return [row(result["name"], None, None, None, "-", "-", f"{said[:160]}{flag}", passed)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0],
                                     epilog="Benchmarks: " + ", ".join(discover()))
    parser.add_argument("--quick", action="store_true", help="small sizes everywhere (a smoke run; targets do not apply)")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds for all of them together (default 600)")
    parser.add_argument("--timeout", type=float, default=400.0, help="seconds for one benchmark at most (default 400)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and how each is run, then exit")
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.quick)

    names = discover()
    if args.list:
        for name in names:
            how = "run(quick) rows" if follows_convention(name) else (
                "script, --quick" if takes_quick(name) else "script, own defaults")
            print(f"{name:<28} {how}")
        return 0
    if args.only:
        unknown = [n for n in args.only if n not in names]
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}")
        names = [n for n in names if n in args.only]

    from benchmarks.common import format_table, machine_info, machine_line, row

    start_machine = machine_info()
    print(machine_line(start_machine), flush=True)
    t0 = time.perf_counter()
    results = []
    for name in names:
        left = args.budget - (time.perf_counter() - t0)
        if left < 5:
            results.append({"name": name, "skipped": True})
            print(f"\n=== {name}: skipped, the {args.budget:.0f} s budget is spent ===", flush=True)
            continue
        timeout = min(args.timeout, left)
        print(f"\n=== {name} (up to {timeout:.0f} s; load average {_load()}) ===",
              flush=True)
        result = run_script(name, args.quick, timeout)
        print(f"=== {name}: {result['status']} in {result['wall']:.1f} s ===", flush=True)
        results.append(result)
    total = time.perf_counter() - t0

    table = []
    for result in results:
        if result.get("skipped"):
            table.append(row(result["name"], None, None, None, "-", "-", "SKIPPED: budget spent", None))
        else:
            table.extend(rows_of(result, args.quick))
    end_machine = machine_info(torch_threads=False)
    print(f"\n{'QUICK ' if args.quick else ''}benchmarks: {len(results)} in {total:.0f} s")
    print(f"platform {start_machine['platform']} | {start_machine['cpu_count']} CPUs "
          f"({start_machine['cpus_usable']} usable) | torch threads {start_machine.get('torch_threads')} | "
          f"load average {start_machine['load_average']} at start, {end_machine['load_average']} at end")
    print(format_table(table))
    bad = any(r.get("passed") is False for r in table) or any(
        not r.get("skipped") and r["status"] != "ok" for r in results)
    return 1 if bad else 0


def _load() -> str:
    from benchmarks.common import load_average

    return load_average()


if __name__ == "__main__":
    sys.exit(main())
