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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine (pytest -n 2)
    two OpenMP threads per process spin against each other (10x slower measured); restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
