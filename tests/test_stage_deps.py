"""Every dvc.yaml stage depends on every file of svrd/ that its script runs.

The imports are read with `ast` (module level and inside functions, `import svrd.x`,
`from svrd.x import y`, `from svrd import x`, relative imports), followed transitively, each
imported package's `__init__.py` included. A dep on a folder (svrd/teach) covers every file
under it. The top-level svrd/__init__.py is exempt while it holds only a docstring and literal
constants (the version): it cannot change what a stage computes.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "svrd"
INERT_ROOT = f"{PACKAGE}/__init__.py"


def module_file(module: str) -> str | None:
    """svrd.a.b -> 'svrd/a/b.py' or 'svrd/a/b/__init__.py' (repo-relative), None if neither exists."""
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(REPO).as_posix()
    return None


def package_of(path: str) -> str:
    """The dotted package a file's relative imports start from."""
    return ".".join(Path(path).parts[:-1])  # svrd/teach/run.py and svrd/teach/__init__.py: svrd.teach


def imported_modules(path: Path, package: str) -> set[str]:
    """Dotted names of the svrd modules one file imports (a `from pkg import name` may name a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def with_parents(module: str) -> list[str]:
    """Importing svrd.a.b runs svrd/__init__.py and svrd/a/__init__.py first."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@functools.cache
def svrd_files(script: Path) -> frozenset[str]:
    """Every svrd file (repo-relative) that running `script` imports, transitively."""
    files: set[str] = set()
    todo = [(script, "")]
    while todo:
        path, package = todo.pop()
        for module in imported_modules(path, package):
            for name in with_parents(module):
                rel = module_file(name)
                if rel is None or rel in files:  # `from svrd.x import func`: svrd.x.func is no file
                    continue
                files.add(rel)
                todo.append((REPO / rel, package_of(rel)))
    return frozenset(files)


def root_is_inert() -> bool:
    """svrd/__init__.py holds only a docstring and assignments of literals."""
    tree = ast.parse((REPO / INERT_ROOT).read_text())
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            continue
        return False
    return True


def stages() -> dict[str, dict]:
    """name -> stage body; a foreach stage's `do` template stands for all its instances."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: body.get("do", body) for name, body in spec.items()}


def script_of(stage: dict) -> Path | None:
    words = stage["cmd"].split()
    scripts = [w for w in words if w.endswith(".py")]
    return REPO / scripts[0] if scripts else None


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def missing_deps(spec: dict[str, dict] | None = None) -> dict[str, list[str]]:
    """stage -> the svrd files its script imports that no dep covers."""
    exempt = {INERT_ROOT} if root_is_inert() else set()
    missing: dict[str, list[str]] = {}
    for name, stage in (spec or stages()).items():
        script = script_of(stage)
        if script is None:
            continue
        deps = [str(d) if not isinstance(d, dict) else next(iter(d)) for d in stage.get("deps", [])]
        needed = svrd_files(script) - exempt
        lacking = sorted(p for p in needed if not covered(p, deps))
        if lacking:
            missing[name] = lacking
    return missing


def test_every_stage_script_is_found():
    for name, stage in stages().items():
        script = script_of(stage)
        assert script is not None and script.is_file(), f"stage {name}: no script in cmd {stage['cmd']!r}"


def test_every_stage_depends_on_every_svrd_file_it_imports():
    missing = missing_deps()
    if missing:
        lines = [f"  stage {name}: add to deps in dvc.yaml: {', '.join(paths)}" for name, paths in missing.items()]
        pytest.fail("stages import svrd files they do not depend on:\n" + "\n".join(lines))


def test_import_walk_sees_function_level_and_transitive_imports():
    # Hand-checked against the sources: teach's backends are imported inside make_backend()
    # (function level), and svrd/answers.py reaches the stage only through svrd/teach/run.py.
    teach_files = svrd_files(REPO / "stages" / "teach.py")
    assert {"svrd/teach/openai_backend.py", "svrd/teach/hf_backend.py", "svrd/teach/run.py",
            "svrd/teach/__init__.py", "svrd/answers.py", "svrd/params.py"} <= teach_files
    assert not any(p.startswith("svrd/distill") for p in teach_files)


def test_folder_dep_covers_its_files_only():
    assert covered("svrd/teach/run.py", ["svrd/teach"])
    assert covered("svrd/teach/run.py", ["svrd/teach/"])
    assert not covered("svrd/teacher.py", ["svrd/teach"])
    assert not covered("svrd/infer.py", ["svrd/infer/run.py"])


def test_a_removed_dep_is_named_with_its_stage():
    spec = stages()
    spec["teach"] = {**spec["teach"], "deps": [d for d in spec["teach"]["deps"] if d != "svrd/teach"]}
    spec["score"] = {**spec["score"], "deps": [d for d in spec["score"]["deps"] if d != "svrd/answers.py"]}
    missing = missing_deps(spec)
    assert "svrd/teach/run.py" in missing["teach"] and "svrd/teach/cache.py" in missing["teach"]
    assert "svrd/answers.py" in missing["score"]  # reached through svrd/evaluate.py, not imported by the script


def _first_svrd_import_line(script: Path) -> tuple[int | None, int | None]:
    """(line of `import _project`, line of the first svrd import) at the script's module level."""
    project = first_svrd = None
    for node in ast.parse(script.read_text(encoding="utf-8")).body:
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        if project is None and "_project" in names:
            project = node.lineno
        if first_svrd is None and any(n == PACKAGE or n.startswith(PACKAGE + ".") for n in names):
            first_svrd = node.lineno
    return project, first_svrd


def test_every_stage_puts_its_own_project_first_and_depends_on_that():
    for name, stage in stages().items():
        script = script_of(stage)
        project, first_svrd = _first_svrd_import_line(script)
        assert project is not None and (first_svrd is None or project < first_svrd), (
            f"stage {name}: {script.name} must `import _project` before any svrd import")
        deps = [str(d) if not isinstance(d, dict) else next(iter(d)) for d in stage.get("deps", [])]
        assert "stages/_project.py" in deps, f"stage {name}: add stages/_project.py to its deps"


def test_a_stage_in_another_copy_runs_that_copys_svrd(tmp_path):
    """A second clone (or worktree, or `dvc exp run --temp` copy) whose svrd differs from the
    installed one: its stage must run its own. The copy's svrd/stage.py is replaced by a marker
    that prints where it was loaded from; without stages/_project.py the installed svrd (this repo,
    or none) is imported and the marker never prints."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "clone"
    shutil.copytree(REPO / "stages", copy / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / PACKAGE, copy / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    marker = copy / PACKAGE / "stage.py"
    marker.write_text("print('svrd.stage from', __file__)\nraise SystemExit(0)\n", encoding="utf-8")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "stages/split.py"], cwd=copy, env=env, capture_output=True, text=True,
                          timeout=120)
    assert f"svrd.stage from {marker}" in proc.stdout, proc.stdout + proc.stderr
