"""Helpers shared by the benchmark scripts: the row convention, machine info, peak memory.

The convention (what `python -m benchmarks` collects): a benchmark module exposes

    run(quick: bool) -> list[dict]

returning rows with the keys of ROW_KEYS:

- name: what was measured ("filter_split.wall");
- measured: the number measured, in `unit`;
- baseline: the reference it is compared with, measured in the same run (the slow side of a
  speed-up), or the budget for an absolute target (a time or memory limit); None when none;
- ratio: speed-ups are baseline / measured time (or measured / baseline throughput), so bigger
  is better; budget rows give measured / budget, so at most 1.0 passes;
- target: the goal as text (">= 20x", "< 120 s");
- unit: of `measured` and `baseline`;
- note: one line of context (sizes, the quick flag);
- passed (optional): True / False against the target, None when it does not apply (quick runs).

`main_for(run)` makes such a module a script: `python -m benchmarks.NAME [--quick] [--json]`
prints the rows as a table (and, with --json, one line `BENCHMARK_ROWS <json>` that the runner
reads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
from collections.abc import Callable

ROW_KEYS = ("name", "measured", "baseline", "ratio", "target", "unit", "note")
ROWS_MARKER = "BENCHMARK_ROWS "
GIB = 1024**3
MIB = 1024**2


def row(name: str, measured: float | None, baseline: float | None, ratio: float | None, target: str, unit: str,
        note: str = "", passed: bool | None = None) -> dict:
    return {"name": name, "measured": measured, "baseline": baseline, "ratio": ratio, "target": target,
            "unit": unit, "note": note, "passed": passed}


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # not available on this platform
        return "n/a"


def machine_info(torch_threads: bool = True) -> dict:
    """The machine a measurement ran on (print it with every number)."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": load_average(),
    }
    if torch_threads:
        try:
            import torch

            info["torch"] = torch.__version__
            info["torch_threads"] = torch.get_num_threads()
        except ImportError:
            info["torch_threads"] = None
    return info


def machine_line(info: dict | None = None) -> str:
    info = info or machine_info()
    torch_part = (f" | torch {info['torch']} with {info['torch_threads']} threads" if info.get("torch_threads")
                  else "")
    return (f"machine: {info['platform']} | {info['processor']} | {info['cpu_count']} CPUs "
            f"({info['cpus_usable']} usable) | python {info['python']}{torch_part} | "
            f"load average {info['load_average']}")


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far.

    On Linux, VmHWM of /proc/self/status: the high-water mark of this process's own memory.
    Not ru_maxrss there: a child started by fork/vfork + exec inherits its parent's ru_maxrss
    (the kernel folds the pre-exec memory into it), so a 10 MiB child of a 600 MiB parent reports
    600 MiB. Elsewhere ru_maxrss (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def verdict(r: dict) -> str:
    passed = r.get("passed")
    return "PASS" if passed is True else "FAIL" if passed is False else "-"


def format_table(rows: list[dict]) -> str:
    header = ("benchmark", "measured", "baseline", "ratio", "target", "unit", "result", "note")
    lines = [[str(r.get("name")), _fmt(r.get("measured")), _fmt(r.get("baseline")), _fmt(r.get("ratio")),
              str(r.get("target") or "-"), str(r.get("unit") or "-"), verdict(r), str(r.get("note") or "")]
             for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join(out)


def main_for(run: Callable[[bool], list[dict]], description: str) -> int:
    """`python -m benchmarks.NAME [--quick] [--json]` for a module following the convention."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run; targets do not apply)")
    parser.add_argument("--json", action="store_true", help=f"also print one line '{ROWS_MARKER.strip()} <json>'")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    rows = run(args.quick)
    print(format_table(rows))
    if args.json:
        print(ROWS_MARKER + json.dumps(rows), flush=True)
    return 0 if all(r.get("passed") is not False for r in rows) else 1
