"""``eval``, ``predict`` and ``export``: use a trained run from the command line.

RUN_DIR is a run folder (a dashboard run or one ``train --out`` wrote) or the id of
a run in the workspace. Errors print one line saying what is wrong and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from finetune_core.data.images import IMAGE_EXTENSIONS
from finetune_core.evaluation.evaluate import evaluate_run
from finetune_core.evaluation.honesty import split_honesty, summary_lines
from finetune_core.evaluation.predict import predict_stream
from finetune_core.export import FORMATS, export_run, export_summary
from finetune_core.models.loaded import load_run_model
from finetune_core.reporting.compare import headline_metrics
from finetune_core.reporting.report import build_report, refresh_report
from finetune_core.runs import RunError, RunFolder, run_workspace
from finetune_core.store import StoreError, Workspace, default_workspace_root

EXIT_ERROR = 1
EXIT_NOT_VERIFIED = 3


def register(sub: argparse._SubParsersAction) -> None:
    """Add the eval, predict and export commands."""

    e = sub.add_parser(
        "eval",
        help="evaluate a run on its val/test splits and write its report",
        description="Write eval.json, predictions.csv and report.html into the run folder "
        "and print accuracy, balanced accuracy, macro F1 and ECE per split.",
    )
    e.add_argument("run", metavar="RUN_DIR", help="run folder, or a run id in the workspace")
    e.add_argument("--json", action="store_true", help="print the headline metrics as JSON")
    e.add_argument("--quiet", action="store_true", help="no progress lines")
    e.set_defaults(handler=run_eval)

    p = sub.add_parser(
        "predict",
        help="classify images with a trained run",
        description="Print path<TAB>label<TAB>probability per image (folders are searched "
        "recursively). Unreadable files get an error line and make the exit code 1; the "
        "other images are still classified.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="run folder, or a run id in the workspace")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--top-k", type=int, default=1, dest="top_k", help="classes per image")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    p.set_defaults(handler=run_predict)

    x = sub.add_parser(
        "export",
        help="export a run and verify the export against the trained model",
        description="Write export/<format>/ and export/<format>.zip into the run folder. "
        f"Exit {EXIT_NOT_VERIFIED} when the export was written but failed verification.",
    )
    x.add_argument("run", metavar="RUN_DIR", help="run folder, or a run id in the workspace")
    x.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    x.add_argument("--out", type=Path, help="folder for the export (default: RUN_DIR/export)")
    x.add_argument("--json", action="store_true", help="print the result as JSON")
    x.set_defaults(handler=run_export)


# ------------------------------------------------------------------- helpers
def resolve_run(args: argparse.Namespace) -> tuple[RunFolder, Workspace | None]:
    """The run named by RUN_DIR (a folder, else a workspace run id) and its workspace."""
    path = Path(args.run)
    if path.is_dir():
        run = RunFolder(path)
    else:
        root = Path(args.workspace).expanduser() if args.workspace else default_workspace_root()
        folder = None
        if (root / "workspace.db").is_file():
            try:
                folder = Workspace(root).run_dir(args.run)
            except StoreError:
                folder = None
        if folder is None or not folder.is_dir():
            raise RunError(
                f"{args.run} is neither a run folder nor the id of a run in the workspace "
                f"at {root}; pass a folder that `train --out` wrote, or --workspace."
            )
        run = RunFolder(folder)
    workspace = run_workspace(run, args.workspace)
    if workspace is None and (default_workspace_root() / "workspace.db").is_file():
        workspace = Workspace(default_workspace_root())
    return run, workspace


def _fail(message: object) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_ERROR


# ---------------------------------------------------------------------- eval
def run_eval(args: argparse.Namespace) -> int:

    try:
        run, workspace = resolve_run(args)
        if not run.has_checkpoint():
            return _fail(
                f"the run {run.id} has no saved model to evaluate: it ended before its first "
                "epoch finished. Re-run it, or resume it if it was stopped."
            )
        if workspace is None:
            return _fail(
                "cannot find the workspace that holds this run's dataset; pass --workspace."
            )
        progress = None if args.quiet else (lambda m: print(m, file=sys.stderr))
        result = evaluate_run(
            run, workspace=workspace, cache_dir=workspace.cache_dir, progress=progress
        )
        report = build_report(run, workspace)
    except (RunError, StoreError) as exc:
        return _fail(exc)
    rows = {split: headline_metrics(m) for split, m in (result.get("splits") or {}).items()}
    if args.json:
        honest = {split: split_honesty(result, split) for split in rows}
        for split, row in rows.items():
            row.update(
                label=honest[split].label,
                chose_model=honest[split].chose_model,
                warnings=honest[split].warnings,
            )
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'split':6} {'images':>6} {'accuracy':>9} {'95% interval':>13} {'baseline':>9} "
        f"{'bal. acc':>9} {'macro F1':>9} {'ECE':>7}"
    )
    for split, m in rows.items():
        print(
            f"{split:6} {m['n']:>6} {_pct(m['accuracy']):>9} {m['accuracy_interval'] or '-':>13} "
            f"{_pct(m['baseline']):>9} {_pct(m['balanced_accuracy']):>9} "
            f"{_pct(m['macro_f1']):>9} {_pct(m['ece']):>7}"
        )
    for line in summary_lines(result):
        print(line)
    print(f"eval: {run.paths.evaluation}")
    print(f"report: {report}")
    return 0


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1%}"


# ------------------------------------------------------------------- predict
def run_predict(args: argparse.Namespace) -> int:

    try:
        run, _ = resolve_run(args)
        if not run.has_checkpoint():
            return _fail(f"the run {run.id} has no saved model to predict with.")
        loaded = load_run_model(run, "best", device=args.device)
    except (RunError, StoreError) as exc:
        return _fail(exc)
    files, errors = collect_images(args.inputs)
    k = max(1, min(args.top_k, len(loaded.class_names)))
    results = []
    for pred in predict_stream(loaded, ((str(p), p) for p in files), k=k):
        path, top = pred.name, pred.top
        if pred.error:
            prefix = "" if pred.error.startswith("cannot read") else "not a usable image: "
            errors.append((Path(path), prefix + pred.error))
            continue
        results.append(
            {
                "path": path,
                "label": top[0][0],
                "prob": top[0][1],
                "top_k": [{"label": lab, "prob": p} for lab, p in top],
            }
        )
        if not args.json:
            print(path + "".join(f"\t{lab}\t{p:.4f}" for lab, p in top))
    for bad_path, error in errors:
        print(f"{bad_path}\terror: {error}", file=sys.stderr)
    if args.json:
        failed = [{"path": str(p), "error": e} for p, e in errors]
        print(json.dumps({"predictions": results, "errors": failed}, indent=2))
    if not files and not errors:
        return _fail("no image files found in the given paths.")
    return EXIT_ERROR if errors else 0


def collect_images(inputs: list[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files named, and image files inside folders (recursively, hidden folders skipped)."""

    files: list[Path] = []
    missing: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and p.suffix.lower() in IMAGE_EXTENSIONS
                    and not any(
                        part.startswith(".") or part == "__MACOSX"
                        for part in p.relative_to(path).parts
                    )
                )
            )
        elif path.exists():
            files.append(path)
        else:
            missing.append((path, "no such file or folder"))
    return files, missing


# -------------------------------------------------------------------- export
def run_export(args: argparse.Namespace) -> int:

    try:
        run, workspace = resolve_run(args)
        result = export_run(run, args.fmt, args.out, workspace=workspace)
        if workspace is not None:  # the shared report shows every export's verification
            refresh_report(run, workspace)
    except (RunError, StoreError) as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(export_summary(result))
    if result.path is None:
        return EXIT_ERROR
    return 0 if result.verified else EXIT_NOT_VERIFIED
