"""``python -m finetune_core data ...``: ingest, list, show and create the demo dataset.

Exit codes of ``data ingest``: 0 imported (warnings allowed), 2 imported but an error in
the health report blocks training, 1 nothing imported (the message says why).
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from finetune_core.config import BOUNDS
from finetune_core.data import (
    CsvSource,
    DatasetNotFound,
    IngestError,
    SplitSpec,
    create_demo_dataset,
    ingest,
    load_dataset,
)
from finetune_core.data.split import HOLDOUT_DEFAULT
from finetune_core.store import Workspace

EXIT_BLOCKED = 2
EXIT_FAILED = 1
MAX_FILES_SHOWN = 5


def split_seed(text: str) -> int:
    """--seed: a whole number in the range a run's seed has (argparse prints the reason)."""
    bound = BOUNDS["seed"]
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (got {text[:40]!r})") from None
    if not bound.low <= value <= bound.high:
        raise argparse.ArgumentTypeError(
            f"must be between {int(bound.low)} and {int(bound.high)} (got {text[:40]})"
        )
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group to the CLI."""
    data = sub.add_parser("data", help="import datasets and check their health")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    p = commands.add_parser(
        "ingest",
        help="import a zip, folder or CSV as a dataset and print its health report",
        description=(
            "Import SOURCE (a .zip, a folder with one sub-folder per class or train/val/test "
            "folders, or a .csv with path,label[,split] columns) and print the health report. "
            "Exit code 0: imported; 2: imported but an error blocks training; 1: not imported."
        ),
    )
    p.add_argument("source", help="path to a .zip, a folder or a .csv")
    p.add_argument("--name", help="dataset name (default: the source's file or folder name)")
    p.add_argument("--images-root", help="CSV only: the folder the CSV's paths are relative to")
    p.add_argument("--val", type=float, default=0.1, help="validation fraction (default 0.1)")
    p.add_argument("--test", type=float, default=0.1, help="test fraction (default 0.1)")
    p.add_argument(
        "--holdout",
        type=float,
        default=HOLDOUT_DEFAULT,
        help=(
            "when the source brings its own split without a test part, this share of each "
            f"class's train images becomes test (default {HOLDOUT_DEFAULT:g}; 0: keep it as is)"
        ),
    )
    p.add_argument("--seed", type=split_seed, default=0, help="split seed (default 0)")
    p.add_argument("--creator", default="", help="who imported it")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_ingest)

    p = commands.add_parser("list", help="list the workspace's datasets")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_list)

    p = commands.add_parser("show", help="print a dataset's health report")
    p.add_argument("dataset", help="dataset id or name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_show)

    p = commands.add_parser("demo", help="create the built-in demo dataset (generated offline)")
    p.add_argument("--per-class", type=int, default=40, help="images per class (default 40)")
    p.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    p.add_argument(
        "--classes", type=int, default=3, help="number of shape classes, 2-6 (default 3)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_demo)


def cmd_ingest(args: argparse.Namespace) -> int:

    workspace = Workspace(args.workspace)
    path = Path(args.source).expanduser()
    source: object = path
    if path.suffix.lower() == ".csv":
        source = CsvSource(path, args.images_root)
    elif args.images_root:
        print("--images-root only applies to a .csv source.", file=sys.stderr)
        return EXIT_FAILED
    resolved = path.resolve()
    name = args.name or (resolved.stem if resolved.is_file() else resolved.name)
    show_progress = not args.json and sys.stderr.isatty()

    def progress(done: int, total: int, message: str) -> None:
        if show_progress:
            print(f"\rReading files {done}/{total}", end="", file=sys.stderr, flush=True)

    try:
        result = ingest(
            workspace,
            source,
            name=name,
            creator=args.creator,
            split=SplitSpec.from_fractions(
                val=args.val, test=args.test, seed=args.seed, holdout=args.holdout
            ),
            progress=progress,
        )
    except IngestError as exc:
        if show_progress:
            print(file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}, indent=2))
        else:
            print(f"Import failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if show_progress:
        print(file=sys.stderr)
    dataset = result.dataset
    if args.json:
        print(json.dumps(_dataset_json(dataset), indent=2, ensure_ascii=False))
    else:
        print(f"Imported dataset {dataset.name!r} as {dataset.id}.")
        print(render_report(dataset))
    return EXIT_BLOCKED if result.health.blocks_training else 0


def cmd_list(args: argparse.Namespace) -> int:
    workspace = Workspace(args.workspace)
    records = workspace.list_datasets()
    if args.json:
        print(json.dumps([_record_json(r) for r in records], indent=2, ensure_ascii=False))
        return 0
    if not records:
        print("No datasets yet. Import one with `data ingest SOURCE --name NAME` or `data demo`.")
        return 0
    header = ("ID", "NAME", "CLASSES", "IMAGES", "HEALTH", "SOURCE", "CREATED")
    table = [header] + [
        (r.id, r.name, str(r.num_classes), str(r.num_images), r.health, r.source_kind, r.created_at)
        for r in records
    ]
    print(_table(table))
    return 0


def cmd_show(args: argparse.Namespace) -> int:

    try:
        dataset = load_dataset(Workspace(args.workspace), args.dataset)
    except DatasetNotFound as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(_dataset_json(dataset), indent=2, ensure_ascii=False))
    else:
        print(render_report(dataset))
    return EXIT_BLOCKED if dataset.health.blocks_training else 0


def cmd_demo(args: argparse.Namespace) -> int:

    try:
        dataset = create_demo_dataset(
            Workspace(args.workspace),
            per_class=args.per_class,
            size=args.size,
            classes=args.classes,
        )
    except (IngestError, ValueError) as exc:
        print(f"Could not create the demo dataset: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(_dataset_json(dataset), indent=2, ensure_ascii=False))
    else:
        print(f"Demo dataset {dataset.name!r} is ready ({dataset.id}).")
        print(render_report(dataset))
    return 0


def render_report(dataset: Any) -> str:
    """The dataset's class/split counts and health findings as plain-text tables."""
    counts = dataset.split_counts()
    splits = [s for s in ("train", "val", "test") if sum(counts.get(s, {}).values())]
    rows = [("CLASS", *(s.upper() for s in splits), "TOTAL")]
    for name in dataset.class_names:
        per = [counts[s][name] for s in splits]
        rows.append((name, *(str(n) for n in per), str(sum(per))))
    totals = [sum(counts[s].values()) for s in splits]
    rows.append(("(all)", *(str(n) for n in totals), str(sum(totals))))
    lines = [
        f"{dataset.num_classes} classes, {sum(totals)} usable images, fingerprint {dataset.fingerprint[:16]}",
        "",
        _table(rows, right_from=1),
        "",
    ]
    report = dataset.health
    findings = report.findings
    if not findings:
        lines.append("Health: no problems found.")
    else:
        lines.append(
            f"Health: {len(report.errors)} error(s), {len(report.warnings)} warning(s), "
            f"{len(report.infos)} note(s)."
            + (" Errors block training until they are fixed." if report.blocks_training else "")
        )
        for f in findings:
            lines.append(f"  {f.severity.upper():<8} {f.code:<20} {_printable(f.message)}")
            if f.files:
                shown = ", ".join(_printable(name) for name in f.files[:MAX_FILES_SHOWN])
                more = f" (+{f.count - MAX_FILES_SHOWN} more)" if f.count > MAX_FILES_SHOWN else ""
                lines.append(f"  {'':<8} {'':<20} files: {shown}{more}")
    return "\n".join(lines)


def _printable(text: str) -> str:
    """``text`` with control characters shown escaped: names from uploads (class names,
    file names) must not move the cursor or recolour the terminal."""
    return "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) == "Cc" else c
        for c in text
    )


def _table(rows: Sequence[tuple[str, ...]], right_from: int | None = None) -> str:
    rows = [tuple(_printable(cell) for cell in row) for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [
            cell.rjust(w) if right_from is not None and i >= right_from else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def _record_json(record: Any) -> dict[str, Any]:
    return asdict(record)


def _dataset_json(dataset: Any) -> dict[str, Any]:
    return {
        "ok": True,
        "dataset": _record_json(dataset.record),
        "split_counts": dataset.split_counts(),
        "health": dataset.health.to_dict(),
    }
