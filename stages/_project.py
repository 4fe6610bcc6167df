"""Imported first by every stage script: puts this project's root at the head of sys.path, so a
stage runs the svrd/ beside it.

`python stages/x.py` puts stages/ on the path, not the root, so `import svrd` would find whatever
`pip install -e .` points at. In a second clone, a git worktree or a `dvc exp run --temp` copy that
is another folder's code, while DVC hashes this folder's svrd/ as the stage's deps: the outputs, the
lock file and DVC's run-cache would then record code the stage never ran.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # not resolved: a symlinked copy is its own project
if sys.path[:1] != [ROOT]:
    sys.path.insert(0, ROOT)
