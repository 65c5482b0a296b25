"""``python -m finetune_core train``: the same trainer as the dashboard, headless."""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from finetune_core import runs
from finetune_core.cli.common import load_config_file
from finetune_core.cli.workspace_runs import cli_creator, end_cli_run, start_cli_run
from finetune_core.config import ConfigError, RunConfig
from finetune_core.data import (
    Dataset,
    DatasetNotFound,
    IngestError,
    SplitSpec,
    ingest,
    load_dataset,
)
from finetune_core.data.split import HOLDOUT_DEFAULT
from finetune_core.jobs import launcher
from finetune_core.jobs.records import StoreEpochs, record_result, write_run_info
from finetune_core.models.classifier import WeightsError, list_architectures
from finetune_core.runs import RunPaths
from finetune_core.store import RunStatus, StoreError, Workspace, utc_now
from finetune_core.training import ddp
from finetune_core.training.callbacks import ConsoleProgress
from finetune_core.training.trainer import Trainer, TrainingError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` command."""
    p = sub.add_parser(
        "train",
        help="train a classifier",
        description="Fine-tune a classifier. SOURCE may be a dataset id or name in the "
        "workspace, or any folder, zip or CSV the data layer ingests (ingested on the fly).",
    )
    p.add_argument("--data", help="dataset id/name, or a folder, .zip or .csv to ingest")
    p.add_argument("--model", help="architecture (see `python -m finetune_core models`), or custom")
    p.add_argument("--weights", help="imagenet | none | state_dict file | backbone .pt2 file")
    p.add_argument("--strategy", choices=["probe", "finetune", "full", "last_n"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--image-size", type=int, dest="image_size")
    p.add_argument("--batch-size", dest="batch_size", help="an integer or auto")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--config", type=Path, help="a run.json/config.json to start from")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any other config field"
    )
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR's last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument(
        "--rdzv-endpoint",
        dest="rdzv_endpoint",
        default="",
        help="with nodes > 1: HOST:PORT of the rendezvous (torchrun's --rdzv-endpoint)",
    )
    p.add_argument("--rdzv-id", dest="rdzv_id", default="", help="torchrun's --rdzv-id")
    p.set_defaults(handler=run_train)

    m = sub.add_parser("models", help="list the architectures")
    m.add_argument("--json", action="store_true")
    m.set_defaults(handler=run_models)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Start from --config (or the run folder's config when resuming), then apply flags."""
    base = RunConfig()
    if args.config is not None:
        base = load_config_file(args.config)
    elif args.resume:
        base = load_config_file(RunPaths(args.out).config, resuming=True)
    changes: dict[str, object] = {}
    for key in (
        "model",
        "weights",
        "strategy",
        "epochs",
        "image_size",
        "batch_size",
        "lr",
        "seed",
        "device",
    ):
        value = getattr(args, key)
        if value is not None:
            changes[key] = value
    if args.data:
        changes["dataset"] = args.data
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE (got {item!r}).")
        changes[key.strip().replace("-", "_")] = value
    return base.replace(**changes)


def _resolve_dataset(workspace: Workspace, source: str) -> Dataset:
    """A workspace dataset by id/name, or a path ingested on the fly (or reused: see
    :func:`_ingest_or_reuse`)."""
    path = Path(source)
    if path.exists():
        dataset = _ingest_or_reuse(workspace, path)
        if dataset.health.blocks_training:
            msgs = "; ".join(f.message for f in dataset.health.errors)
            raise SystemExit(f"error: the dataset at {source} cannot be trained on: {msgs}")
        return dataset
    try:
        return load_dataset(workspace, source)
    except DatasetNotFound as exc:
        raise SystemExit(f"error: {exc}") from exc


def _ingest_or_reuse(workspace: Workspace, path: Path) -> Dataset:
    """Ingest ``path`` under its name (``photos``, or ``photos-2`` when another dataset
    has that name); when the workspace already has a dataset with the same fingerprint
    (the same images, names and splits: the same folder ingested before), drop the new
    copy and use that one. A train/val folder without test gets the Data page's default
    test hold-out, as ``data ingest`` does."""
    try:
        name = workspace.free_dataset_name(path.stem or "dataset")
        split = SplitSpec.from_fractions(holdout=HOLDOUT_DEFAULT)
        result = ingest(workspace, path, name=name, creator=cli_creator(), split=split)
    except (IngestError, StoreError) as exc:
        raise SystemExit(f"error: {path} could not be ingested: {exc}") from exc
    new = result.dataset
    same = workspace.find_dataset_by_fingerprint(new.fingerprint, other_than=new.id)
    if same is not None:
        workspace.delete_dataset(new.id)
        print(f"dataset: {path} is already the dataset {same.name!r} ({same.id}); using it",
              file=sys.stderr)  # fmt: skip
        return load_dataset(workspace, same.id)
    print(f"dataset: ingested {path} as {new.name!r} ({new.id})", file=sys.stderr)
    return new


def out_folder_problem(workspace: Workspace, out: Path) -> str | None:
    """Why ``train --out`` may not write into ``out``, or None.

    The workspace's own folders and the folders of runs the dashboard (the job manager)
    owns are refused: training there would overwrite a finished model, or mix a run's
    files into the workspace's. A CLI run's folder may be trained into again (that is how
    ``--resume`` and re-training work), as may any new folder, inside ``runs/`` or not.
    """
    folder = out.expanduser().resolve()
    root = workspace.root
    if folder == root or folder == workspace.runs_dir.resolve():
        return f"{out} is the workspace's own folder; choose a folder for this run."
    for kind, owned in (("datasets", workspace.datasets_dir), ("cache", workspace.cache_dir),
                        ("temporary files", workspace.tmp_dir)):  # fmt: skip
        if folder.is_relative_to(owned.resolve()):
            return f"{out} is inside the workspace's {kind} folder; choose a folder for this run."
    record = workspace.find_run_by_folder(folder)
    if record is None and folder.is_relative_to(workspace.runs_dir.resolve()):
        # inside runs/<id>/ of a dashboard run (its checkpoints/, export/ ...)
        owner = folder.relative_to(workspace.runs_dir.resolve()).parts[0]
        record = workspace.find_run_by_folder(workspace.runs_dir / owner)
    if record is None or record.from_cli:
        return None
    return (
        f"{out} is the folder of the dashboard run {record.id} ({record.name!r}, "
        f"{record.status}); training into it would overwrite its model and history. "
        f"Choose another --out, or use `runs resume {record.id}` to continue that run."
    )


def run_train(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        config.validate()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not ddp.under_torchrun():  # under torchrun: the job manager's own launch of its run
        try:
            problem = out_folder_problem(Workspace(args.workspace), args.out)
        except (StoreError, OSError, sqlite3.Error) as exc:
            problem = f"cannot open the workspace: {exc}"
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2

    if launcher.is_multi_process(config) and not ddp.under_torchrun():
        return launcher.launch_from_cli(
            config,
            args.out,
            workspace=Path(args.workspace) if args.workspace else None,
            resume=args.resume,
            rdzv_endpoint=args.rdzv_endpoint,
            rdzv_id=args.rdzv_id,
        )
    try:
        ctx = ddp.setup(config)  # SINGLE outside torchrun
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with ddp.errors_recorded(ctx, args.out):  # a rank's error, for the launcher
            return _train(args, config, ctx)
    finally:
        ddp.teardown(ctx)


def _train(args: argparse.Namespace, config: RunConfig, ctx: ddp.DistContext) -> int:
    """Train in this process: the whole run, or this rank's part under torchrun."""

    workspace = Workspace(args.workspace)
    try:
        # rank 0 resolves (and maybe ingests) the dataset; the other ranks load it by id
        dataset = _resolve_dataset(workspace, config.dataset) if ctx.is_main else None
        dataset_id = ddp.broadcast_object(dataset.id if dataset else None, ctx)
        dataset = dataset or _resolve_dataset(workspace, dataset_id)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        if ctx.enabled:
            ddp.record_error(ctx, args.out, exc)
        return 2
    config = config.replace(dataset=dataset.id)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    run_id = None
    if ctx.is_main:
        run_id = start_cli_run(workspace, out, config, resume=args.resume)
        runs.save_config(RunPaths(out), config)
        write_run_info(out, config, dataset, workspace, run_id=run_id)
    callbacks = ddp.rank_callbacks(ctx, out)
    if not args.quiet and ctx.is_main:
        callbacks.append(ConsoleProgress())
    if run_id is not None:
        callbacks.append(StoreEpochs(workspace, run_id))
    stop = threading.Event()
    trainer = Trainer(
        config,
        dataset,
        out,
        workspace.cache_dir,
        callbacks=callbacks,
        stop_event=stop,
        resume=args.resume,
    )
    return _fit(trainer, ctx, stop, workspace, run_id)


def _fit(
    trainer: Trainer,
    ctx: ddp.DistContext,
    stop: threading.Event,
    workspace: Workspace,
    run_id: str | None,
) -> int:
    """Run the trainer; the outcome goes to the terminal, the summary and the run's row."""
    out = trainer.run_dir
    started = time.monotonic()
    signals = ddp.stop_on_signals(stop) if ctx.enabled else contextlib.nullcontext()
    try:
        with signals, ddp.errors_recorded(ctx, out):
            result = trainer.fit()
    except KeyboardInterrupt:
        message = "interrupted: the last complete epoch's checkpoint is kept; --resume continues"
        end_cli_run(workspace, run_id, RunStatus.INTERRUPTED, message)
        print(f"\n{message}", file=sys.stderr)
        return 130
    except (TrainingError, ConfigError, WeightsError, RuntimeError) as exc:
        end_cli_run(workspace, run_id, RunStatus.FAILED, str(exc))
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except BaseException as exc:  # the row must not stay RUNNING, whatever ended the run
        end_cli_run(workspace, run_id, RunStatus.FAILED, str(exc) or type(exc).__name__)
        raise
    if not ctx.is_main:
        return 0
    if run_id is not None:
        record_result(workspace, run_id, result)
        workspace.update_run(run_id, finished_at=utc_now())
    runs.update_summary(RunPaths(out), wall_seconds=round(time.monotonic() - started, 3))
    va = result.best_val_accuracy
    print(
        f"{result.status}: best epoch {result.best_epoch}, val accuracy {va:.4f}"
        if va is not None
        else f"{result.status}: no validation split",
    )
    print(f"run folder: {out}")
    return 0


def run_models(args: argparse.Namespace) -> int:

    infos = list_architectures()
    if args.json:
        print(json.dumps([asdict(i) for i in infos], indent=2))
        return 0
    print(f"{'model':22} {'params':>8} {'input':>6} {'top-1':>6} {'GFLOPS':>7} cached")
    for i in infos:
        top1 = f"{i.imagenet_top1:.1f}" if i.imagenet_top1 else "-"
        gf = f"{i.gflops:.2f}" if i.gflops else "-"
        print(
            f"{i.name:22} {i.params / 1e6:7.1f}M {i.input_size:6} {top1:>6} {gf:>7} {'yes' if i.cached else 'no'}"
        )
    return 0
