"""Does a fresh clone reproduce the committed dvc.lock? Clone, install, `dvc repro`, compare.

    python scripts/check_lock.py                          # the README's first command in a fresh clone of HEAD
    python scripts/check_lock.py --venv .venv             # reuse an installed environment (no install step)
    python scripts/check_lock.py --venv .venv tiny_student   # only these stages (and what they depend on)

It clones the repository's committed HEAD into a temporary folder (no DVC cache, no teacher
cache), removes the clone's dvc.lock, and runs the README's first command there (a venv
installed from requirements.lock, then `dvc repro`); with --venv it runs `dvc repro` with that
environment instead. Then it compares the hash of every `data/` output in the new dvc.lock with
the committed one and prints each mismatch. Exit status: 0 all equal, 1 a mismatch or a missing
output, 2 the run failed. Slow (a full `dvc repro`, plus the install): not part of CI.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = "data/"


def readme_first_command(readme: Path) -> str:
    """The one-line command in README.md's first bash block (install and `dvc repro`)."""
    block = re.search(r"```bash\n(.*?)```", readme.read_text(), flags=re.DOTALL)
    if block is None:
        raise SystemExit(f"no ```bash block in {readme}")
    return block.group(1).strip()


def data_hashes(lock: dict) -> dict[tuple[str, str], str]:
    """(stage, out path) -> md5 of every out under data/ in a parsed dvc.lock."""
    hashes = {}
    for stage, body in (lock.get("stages") or {}).items():
        for out in body.get("outs") or []:
            if str(out["path"]).startswith(DATA):
                hashes[(stage, out["path"])] = out.get("md5") or out.get("hash")
    return hashes


def compare(committed: dict, fresh: dict) -> list[str]:
    """Lines naming every data/ out whose hash differs, for the stages the fresh run wrote."""
    old, new = data_hashes(committed), data_hashes(fresh)
    ran = set(fresh.get("stages") or {})
    problems = []
    for (stage, path), md5 in sorted(old.items()):
        if stage not in ran:
            continue
        if (stage, path) not in new:
            problems.append(f"{stage}: {path}: committed {md5}, not written by the fresh run")
        elif new[(stage, path)] != md5:
            problems.append(f"{stage}: {path}: committed {md5}, fresh clone {new[(stage, path)]}")
    problems += [f"{stage}: {path}: new output {md5}, not in the committed dvc.lock"
                 for (stage, path), md5 in sorted(new.items()) if (stage, path) not in old]
    return problems


def clone(dest: Path) -> None:
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(dest)], check=True)


def repro_command(clone_dir: Path, venv: Path | None, targets: list[str]) -> tuple[str, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "SVRD_CACHE_DIR")}
    env.update(DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    repro = " ".join(["dvc repro", *targets])
    if venv is None:
        command = readme_first_command(clone_dir / "README.md")
        if not command.endswith("dvc repro"):
            raise SystemExit(f"README's first command does not end with `dvc repro`: {command}")
        return command[: -len("dvc repro")] + repro, env
    # The clone's own svrd, not the one the environment has installed (editable, elsewhere).
    env["PYTHONPATH"] = str(clone_dir)
    return f". {venv.resolve()}/bin/activate && {repro}", env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="stages to reproduce (default: all)")
    parser.add_argument("--venv", type=Path, help="an installed environment to use instead of a fresh install")
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone and print where it is")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="svrd-check-lock-"))
    clone_dir = tmp / "clone"
    clone(clone_dir)
    committed = yaml.safe_load((clone_dir / "dvc.lock").read_text())
    (clone_dir / "dvc.lock").unlink()
    command, env = repro_command(clone_dir, args.venv, args.targets)
    print(f"check_lock: in {clone_dir}: {command}", flush=True)
    proc = subprocess.run(["bash", "-c", command], cwd=clone_dir, env=env)
    if proc.returncode != 0:
        print(f"check_lock: the run failed ({proc.returncode}); clone kept at {clone_dir}", file=sys.stderr)
        return 2
    fresh = yaml.safe_load((clone_dir / "dvc.lock").read_text())
    problems = compare(committed, fresh)
    checked = sum(1 for (stage, _) in data_hashes(committed) if stage in (fresh.get("stages") or {}))
    for line in problems:
        print(f"MISMATCH {line}")
    print(f"check_lock: {checked} data/ outputs compared, {len(problems)} mismatches"
          + (f"; clone at {clone_dir}" if args.keep or problems else ""))
    if not args.keep and not problems:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
