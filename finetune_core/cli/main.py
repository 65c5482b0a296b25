"""Command line: ``python -m finetune_core <command> ...`` (also installed as ``finetune``).

Each command group lives in its own module with a ``register(subparsers)`` function.
"""

from __future__ import annotations

import argparse
import sys

from finetune_core.cli import (
    data,
    evaluate,
    run_queue,
    train,
    users,
    workspace_cmd,
    workspace_runs,
)
from finetune_core.store import StoreError

COMMAND_MODULES = (data, train, evaluate, workspace_runs, run_queue, users, workspace_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune_core",
        description="Fine-tune, evaluate and export image classifiers from the command line.",
    )
    parser.add_argument(
        "--workspace", help="workspace folder (default: $FINETUNE_WORKSPACE or ./workspace)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except StoreError as exc:  # a read-only or damaged workspace: one line, no traceback
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
