"""``workspace check|rebuild|backup|restore``: the workspace's database, looked after.

Every command prints one line per outcome and exits 1 with a one-line reason (no
traceback) when the workspace cannot be used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from finetune_core import workspace_backup
from finetune_core.cli.common import workspace_root
from finetune_core.store import WORKSPACE_DB, Workspace
from finetune_core.store_health import StoreError
from finetune_core.workspace_backup import BackupError
from finetune_core.workspace_repair import rebuild_index

EXIT_BROKEN = 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``workspace`` command group."""
    group = sub.add_parser("workspace", help="check, rebuild, back up or restore the workspace")
    commands = group.add_subparsers(dest="workspace_command", required=True, metavar="SUBCOMMAND")
    for name, handler, text in (
        ("check", cmd_check, "SQLite's integrity check of workspace.db, and the backups"),
        ("rebuild", cmd_rebuild, "rebuild the index from the dataset and run folders"),
        ("backup", cmd_backup, "take an online backup of workspace.db into backups/ now"),
        ("restore", cmd_restore, "put the newest intact backup (or --backup FILE) in place"),
    ):
        p = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("--workspace", default=argparse.SUPPRESS, help="workspace folder")
        p.set_defaults(handler=_guarded(handler))
        if name == "rebuild":
            p.add_argument(
                "--no-backup",
                action="store_true",
                help="do not start from the newest backup (rows from the folders only)",
            )
        if name == "restore":
            p.add_argument("--backup", help="the backup file (default: the newest intact one)")


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """One line on stderr and exit 1 for a workspace that cannot be used."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args) or 0)
        except (StoreError, BackupError) as exc:
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            return EXIT_BROKEN

    return run


def cmd_check(args: argparse.Namespace) -> int:
    root = workspace_root(args.workspace)
    db = root / WORKSPACE_DB
    backups = workspace_backup.list_backups(root / workspace_backup.BACKUPS_DIR)
    newest = f"newest backup {backups[0].name} ({len(backups)} kept)" if backups else "no backups"
    if not db.is_file():
        folders = _count(root / "datasets") + _count(root / "runs")
        if folders:
            print(
                f"error: {db} is missing while {folders} dataset/run folder(s) exist; run "
                "`python -m finetune_core workspace rebuild` (or open the dashboard: it "
                f"rebuilds by itself); {newest}.",
                file=sys.stderr,
            )
        else:
            print(f"error: there is no workspace at {root}.", file=sys.stderr)
        return EXIT_BROKEN
    problems = workspace_backup.integrity_problems(db)
    if problems:
        print(
            f"error: {db} failed its integrity check ({len(problems)} problem(s), first: "
            f"{' '.join(problems[0].split())}); restore a backup with "
            f"`python -m finetune_core workspace restore` ({newest}).",
            file=sys.stderr,
        )
        return EXIT_BROKEN
    print(f"ok: {db} passed the integrity check; {newest}.")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    workspace = Workspace(workspace_root(args.workspace))  # rebuilds by itself if db is gone
    if workspace.index_lost:
        print("The database was missing: it was rebuilt when the workspace opened.")
    report = rebuild_index(workspace, use_backup=not args.no_backup)
    print(f"Rebuilt the index of {workspace.root}: {report.line()}.")
    for line in report.skipped:
        print(f"  skipped {line}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    workspace = Workspace(workspace_root(args.workspace))
    target = workspace.backup()
    print(f"Backed up {workspace.db_path.name} to {target}.")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    root = workspace_root(args.workspace)
    folder = root / workspace_backup.BACKUPS_DIR
    if args.backup:
        candidates = [Path(args.backup).expanduser()]
    else:
        candidates = [
            b for b in workspace_backup.list_backups(folder)
            if not workspace_backup.integrity_problems(b)
        ]  # fmt: skip
    if not candidates or not candidates[0].is_file():
        raise BackupError(
            f"There is no intact backup in {folder}; rebuild the index from the folders "
            "with `python -m finetune_core workspace rebuild` instead."
        )
    kept = workspace_backup.restore_backup(candidates[0], root / WORKSPACE_DB)
    aside = f"; the database it replaced is kept as {kept.name}" if kept else ""
    print(f"Restored {candidates[0].name}{aside}.")
    report = rebuild_index(Workspace(root))  # runs and datasets made since the backup
    print(f"Then from the folders: {report.line()}.")
    return 0


def _count(folder: Path) -> int:
    try:
        return sum(1 for p in folder.iterdir() if p.is_dir())
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m finetune_core.cli.workspace_cmd ...``: these commands on their own."""
    parser = argparse.ArgumentParser(prog="python -m finetune_core")
    parser.add_argument("--workspace", help="workspace folder")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
