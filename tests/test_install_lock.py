"""The README's install commands use the lock, CI runs the README's test command, and the lock
pins every package pyproject.toml asks for (a dependency added without re-locking fails here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, what the README installs

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def required() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {canonical(re.match(r"[A-Za-z0-9._-]+", spec).group(0)) for spec in specs}


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)


def test_lock_pins_every_direct_dependency():
    missing = sorted(required() - set(locked()))
    assert not missing, (f"requirements.lock lacks {missing}: re-run the lock command in README.md "
                         "('Pinned installs')")


def test_lock_pins_the_versions_the_outputs_carry():
    pins = locked()
    assert pins["torch"] == "2.13.0"
    assert pins["transformers"] == "5.23.0"  # written into data/tiny_student/config.json; dvc.lock was made with it


def test_readme_commands_install_from_the_lock_and_ci_runs_the_test_command():
    pipeline, tests = bash_blocks()[:2]
    for command in (pipeline, tests):
        installs = re.findall(r"pip install [^&]*", command)
        assert installs and all("-c requirements.lock" in step for step in installs), command
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == tests.strip()


def test_check_lock_names_each_changed_data_output():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_lock", REPO / "scripts" / "check_lock.py")
    check_lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_lock)
    committed = {"stages": {
        "split": {"outs": [{"path": "data/split", "md5": "a.dir"}]},
        "tiny_student": {"outs": [{"path": "data/tiny_student", "md5": "b.dir"}]},
        "score": {"outs": [{"path": "metrics/report.md", "md5": "c"}]},  # not data/: not compared
        "distill": {"outs": [{"path": "data/distill/model", "md5": "d.dir"}]},  # not run: not compared
    }}
    fresh = {"stages": {
        "split": {"outs": [{"path": "data/split", "md5": "a.dir"}]},
        "tiny_student": {"outs": [{"path": "data/tiny_student", "md5": "B.dir"}]},
        "score": {"outs": [{"path": "metrics/report.md", "md5": "C"}]},
    }}
    assert check_lock.compare(committed, fresh) == [
        "tiny_student: data/tiny_student: committed b.dir, fresh clone B.dir"]
