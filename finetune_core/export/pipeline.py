"""``export_run``: export a trained run as one format, verify it, and put it in place.

Each export lands in the run's ``paths.export_bundle(fmt)`` folder with its
``paths.export_zip(fmt)`` next to it for download (or in ``out_dir`` when given).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune_core.export import writers
from finetune_core.export.bundle import (
    BundlePaths,
    read_verification,
    write_bundle_files,
    write_verification,
)
from finetune_core.export.errors import first_line, quiet
from finetune_core.export.formats import FORMAT_TITLES, FORMATS, parse_format
from finetune_core.export.packaging import (
    TEMP_PREFIX,
    clean_stale,
    make_readable,
    swap_in,
    write_zip,
)
from finetune_core.export.verify import TOLERANCE, sample_inputs, verify_export
from finetune_core.models.loaded import load_run_model
from finetune_core.runs import RunError, RunFolder, run_record, run_status, run_workspace
from finetune_core.store import RunStatus, Workspace


@dataclass
class ExportResult:
    """What an export produced and whether it was verified.

    ``path`` is the zip to download (None when the exporter itself failed); ``files``
    are the names inside the export folder; ``details`` is verification.json.
    """

    format: str
    path: Path | None
    verified: bool
    max_abs_diff: float | None
    tolerance: float
    message: str
    files: list[str] = field(default_factory=list)
    folder: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = self.path.name if self.path else None
        out["folder"] = self.folder.name if self.folder else None
        return out


def check_exportable(run: RunFolder, workspace: Workspace | None) -> None:
    """Raise RunError unless the run has a model worth exporting."""
    if run_status(run, workspace) == RunStatus.FAILED:
        raise RunError(
            "This run FAILED; its model is not exported. Fix the cause shown on the run "
            "and re-run it, then export the new run."
        )
    if not run.has_checkpoint():
        raise RunError(
            "This run has no saved model to export: it ended before its first epoch "
            "finished. Re-run it, or resume it if it was stopped."
        )


def read_export_checks(run: RunFolder) -> list[dict[str, Any]]:
    """Every export's verification.json in the run folder, in FORMATS order."""
    checks = (read_verification(BundlePaths(run.paths.export_bundle(f))) for f in FORMATS)
    return [check for check in checks if check is not None]


def placement(run: RunFolder, fmt: str, out_dir: Path | None) -> tuple[Path, Path, Path]:
    """(exports folder, bundle folder, zip) for ``fmt``: the run's own, or under ``out_dir``."""
    paths = run.paths
    folder, zip_path = paths.export_bundle(fmt), paths.export_zip(fmt)
    if out_dir is None:
        return paths.exports, folder, zip_path
    root = Path(out_dir)
    return (
        root,
        root / folder.relative_to(paths.exports),
        root / zip_path.relative_to(paths.exports),
    )


def export_run(
    run: RunFolder,
    fmt: str,
    out_dir: Path | None = None,
    *,
    workspace: Workspace | str | Path | None = None,
) -> ExportResult:
    """Export the run's best checkpoint as ``fmt`` into ``out_dir`` (default: the run's exports).

    Raises RunError for a run without a checkpoint or a FAILED run, ExportError for an
    unknown format or missing ONNX packages. An exporter that cannot handle the model
    gives ``verified=False`` with its first error line; a check that fails gives
    ``verified=False`` with the numbers (the export is still written, to inspect).
    """
    fmt = parse_format(fmt)
    ws = run_workspace(run, workspace)
    check_exportable(run, ws)
    if fmt == "onnx":
        writers.require_onnx()
    loaded = load_run_model(run, "best", device="cpu")
    model = loaded.model.float().eval()
    samples = sample_inputs(run, loaded, ws)
    root, folder, zip_path = placement(run, fmt, out_dir)
    root.mkdir(parents=True, exist_ok=True)
    clean_stale(root)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{fmt}-", dir=root))
    partial_zip = root / f"{tmp.name}.zip"
    try:
        try:
            with quiet():
                writers.WRITERS[fmt](model, samples.batch[:2], tmp, run)
        except Exception as exc:  # the exporter's own error, reported with its first line
            return ExportResult(
                format=fmt,
                path=None,
                verified=False,
                max_abs_diff=None,
                tolerance=TOLERANCE,
                message=f"The {FORMAT_TITLES[fmt]} export failed ({type(exc).__name__}): "
                f"{first_line(exc)[:300]}",
            )
        record = run_record(run, ws)
        name = (record.name if record else "") or run.config.name or run.id
        bundle = BundlePaths(tmp)
        write_bundle_files(bundle, run, name, loaded, fmt)
        check = verify_export(tmp, fmt, model, samples)
        write_verification(bundle, check)
        files = sorted(p.name for p in tmp.iterdir())
        make_readable(tmp)
        write_zip(tmp, partial_zip, f"{run.id}-{fmt}")
        partial_zip.chmod(0o644)
        swap_in(tmp, folder)
        os.replace(partial_zip, zip_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            partial_zip.unlink()
    return ExportResult(
        format=fmt,
        path=zip_path,
        verified=bool(check["passed"]),
        max_abs_diff=check["max_abs_diff"],
        tolerance=TOLERANCE,
        message=check["message"],
        files=files,
        folder=folder,
        details=check,
    )


def export_summary(result: ExportResult) -> str:
    """Two or three lines for the CLI: where the export is and what the check said."""
    lines = [result.message]
    if result.path is not None:
        lines.insert(0, f"{result.format} export: {result.path}")
        lines.append(f"folder: {result.folder} ({', '.join(result.files)})")
    return "\n".join(lines)
