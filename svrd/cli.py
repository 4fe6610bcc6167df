"""The `svrd` command line: one subcommand per reusable tool.

Each subcommand lives beside its logic; this module only wires them up, importing lazily so
`svrd score` does not pay for torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from svrd.errors import SvrdError

# name -> (module, help). Each module defines add_arguments(parser) and run(args) -> int.
SUBCOMMANDS = {
    "score": ("svrd.scoring", "score predictions against ScienceQA problems (official groups, per topic)"),
    "score-open": ("svrd.open_scoring", "score free-form answers against references: BLEU, ROUGE, BERTScore (Table 2)"),
    "sample": ("svrd.sample", "write the embedded sample dataset in ScienceQA's release layout"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="svrd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except SvrdError as exc:
        print(f"svrd {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
