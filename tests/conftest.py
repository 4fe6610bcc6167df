"""Shared test fixtures."""

from __future__ import annotations

import pytest
from project_copy import copy_project, run, run_env


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """The real pipeline, `dvc repro` in a temporary copy of the repo, once per session."""
    root = tmp_path_factory.mktemp("pipeline")
    project = copy_project(root / "project")
    env = run_env(root)
    proc = run(["dvc", "repro"], project, env)
    return {"project": project, "env": env, "repro": proc, "root": root}
