"""Ingest: turn a source into a registered dataset, streaming one file at a time.

The dataset is built in ``workspace.tmp_dir``, moved into place with one ``os.replace``
and only then registered, so a failure at any point leaves no row and no files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

from finetune_core.data.archive import IngestLimits, budget_message
from finetune_core.data.dataset import DATASET_META, HEALTH_NAME, IMAGES_DIR, Dataset
from finetune_core.data.decode_budget import decoder_threads
from finetune_core.data.errors import IngestError
from finetune_core.data.fingerprint import dataset_fingerprint
from finetune_core.data.health import HealthReport, build_report
from finetune_core.data.images import IMAGE_EXTENSIONS, ImageReadError, probe_image
from finetune_core.data.manifest import MANIFEST_NAME, ManifestRow, write_manifest
from finetune_core.data.sources import Candidate, Plan, open_plan
from finetune_core.data.split import SplitSpec, assign_splits, holds_out_test
from finetune_core.fsutil import atomic_write_json
from finetune_core.store import DatasetRecord, StoreError, Workspace, check_name, new_id

Progress = Callable[[int, int, str], None]

_CHUNK = 1024 * 1024
_STALE_BUILD_SECONDS = 24 * 3600
_PROGRESS_INTERVAL = 0.1


@dataclass
class IngestResult:
    dataset: Dataset
    health: HealthReport


def ingest(
    workspace: Workspace,
    source: object,
    *,
    name: str,
    creator: str = "",
    split: SplitSpec = SplitSpec(),
    progress: Progress | None = None,
    limits: IngestLimits | None = None,
) -> IngestResult:
    """Import ``source`` as a new dataset named ``name`` and compute its health report.

    ``source``: a path to a .zip, a folder (class folders, or train/ val|valid/ [test/]
    each with class folders) or a .csv; ``CsvSource``; ``ServerPath``; an
    ``UploadedFile`` or a list of them. Raises :class:`IngestError` with a message a user
    can act on; then nothing is registered and nothing is left on disk. A dataset whose
    report has errors is still registered (the report says what blocks training).
    """
    return _ingest(
        workspace, source, name=name, creator=creator, split=split, progress=progress, limits=limits
    )


@dataclass
class _Built:
    """Everything about a dataset except its image files, ready to be written."""

    rows: list[ManifestRow]
    report: HealthReport
    record: DatasetRecord
    meta: dict[str, Any]


def _ingest(
    workspace: Workspace,
    source: object,
    *,
    name: str,
    creator: str,
    split: SplitSpec,
    progress: Progress | None,
    limits: IngestLimits | None,
    source_kind: str | None = None,
    extra_summary: dict[str, Any] | None = None,
) -> IngestResult:
    name = _checked_name(workspace, name)
    problems = split.problems()
    if problems:
        raise IngestError(" ".join(problems))
    limits = limits or IngestLimits.for_dir(workspace.root)
    remove_stale_builds(workspace.tmp_dir)

    dataset_id = new_id("d")
    build = workspace.tmp_dir / f"ingest-{dataset_id}"
    final = workspace.dataset_dir(dataset_id)
    try:
        build.mkdir(parents=True)
    except OSError as exc:
        raise IngestError(f"Could not create {build}: {exc.strerror or exc}.") from exc
    moved = False
    try:
        with open_plan(source, limits) as plan:
            rows = _import(plan, build / IMAGES_DIR, limits, progress)
            built = _describe(
                plan, rows, split, DatasetRecord(id=dataset_id, name=name, creator=creator)
            )
        if source_kind:
            built.record.source_kind = built.meta["source_kind"] = source_kind
        built.record.summary.update(extra_summary or {})
        write_manifest(build / MANIFEST_NAME, built.rows)
        atomic_write_json(build / HEALTH_NAME, built.report.to_dict())
        atomic_write_json(build / DATASET_META, built.meta)
        os.replace(build, final)
        moved = True
        workspace.add_dataset(built.record)
    except BaseException as exc:
        shutil.rmtree(final if moved else build, ignore_errors=True)
        if isinstance(exc, IngestError) or not isinstance(exc, Exception):
            raise
        if isinstance(exc, OSError):
            raise IngestError(
                f"Could not write the dataset: {exc.strerror or exc}. Check free disk space."
            ) from exc
        raise IngestError(f"The import failed unexpectedly: {type(exc).__name__}: {exc}") from exc
    return IngestResult(dataset=Dataset(workspace, built.record), health=built.report)


def _checked_name(workspace: Workspace, name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise IngestError("Give the dataset a name.")
    try:
        name = check_name(name, "dataset")
    except StoreError as exc:
        raise IngestError(str(exc)) from None
    if workspace.find_dataset_by_name(name):
        raise IngestError(
            f"A dataset named {name!r} already exists. Choose another name or delete it first."
        )
    return name


def _describe(
    plan: Plan, rows: list[ManifestRow], split: SplitSpec, record: DatasetRecord
) -> _Built:
    """Split the rows, build the health report, and fill in the record and dataset.json."""
    class_names = sorted({c.label for c in plan.candidates})
    held_out = split.holdout if holds_out_test(rows, split) else None
    rows, carved = assign_splits(rows, split)
    val_share = split.val / (split.train + split.val) if carved else None
    report = build_report(rows, class_names, plan.skipped, val_carved=val_share)
    usable = sum(1 for r in rows if r.ok)
    if not usable:
        raise _nothing_usable(rows)
    record.source_kind = plan.kind
    record.num_images = usable
    record.num_classes = len(class_names)
    record.class_names = class_names
    record.fingerprint = dataset_fingerprint(rows, class_names)
    record.health = report.status
    record.summary = _summary(report, split, plan)
    record.summary["test_held_out"] = held_out  # share of the user's train split, or None
    meta = {
        "format_version": 1,
        "id": record.id,
        "name": record.name,
        "created_at": record.created_at,
        "source_kind": record.source_kind,
        "source": plan.description,
        "layout": plan.layout,
        "user_split": plan.user_split,
        "split": split.to_dict(),
        "class_names": class_names,
        "fingerprint": record.fingerprint,
        "test_held_out": held_out,
    }
    return _Built(rows=rows, report=report, record=record, meta=meta)


def _import(
    plan: Plan, images_dir: Path, limits: IngestLimits, progress: Progress | None
) -> list[ManifestRow]:
    """Copy and hash each candidate in turn; probe (decode) the copies on a few threads.

    Pillow releases the GIL while decoding, so probing overlaps with copying. At most
    ``2 * workers`` files are in flight, so memory does not grow with the dataset.
    """
    candidates = plan.candidates
    labels = sorted({c.label for c in candidates})
    class_dirs = {label: f"{i:03d}-{_slug(label, 40) or 'class'}" for i, label in enumerate(labels)}
    for folder in class_dirs.values():
        (images_dir / folder).mkdir(parents=True, exist_ok=True)
    total = len(candidates)
    budget = [limits.max_total_bytes]
    rows: list[ManifestRow | None] = [None] * total
    pending: deque[tuple[int, Future[ManifestRow]]] = deque()
    workers = _probe_workers()
    last = 0.0
    if progress:
        progress(0, total, f"Reading {total} files")
    with ThreadPoolExecutor(workers, thread_name_prefix="ingest-probe") as pool:
        for index, cand in enumerate(candidates):
            row = _copy_one(cand, index, images_dir, class_dirs[cand.label], limits, budget)
            if row.ok:
                pending.append((index, pool.submit(_probed, row, images_dir, limits.max_pixels)))
            else:
                rows[index] = row
            while len(pending) > 2 * workers:
                done, future = pending.popleft()
                rows[done] = future.result()
            now = time.monotonic()
            if progress and now - last >= _PROGRESS_INTERVAL and index + 1 < total:
                last = now
                progress(index + 1, total, cand.source)
        for done, future in pending:
            rows[done] = future.result()
    if progress:
        progress(total, total, "Checked every file")
    return [r for r in rows if r is not None]


def _probe_workers() -> int:
    """Threads for the probe: the cores this process may use, at most 8. How many decode
    at once is bounded by the process's decode memory budget, not by this number."""
    return decoder_threads(8)


def _copy_one(
    cand: Candidate,
    index: int,
    images_dir: Path,
    class_dir: str,
    limits: IngestLimits,
    budget: list[int],
) -> ManifestRow:
    """Copy one file; the row is ``ok`` (still to be probed) or says why it is unusable."""
    rel = f"{class_dir}/{index:06d}-{_file_name(cand.source)}"
    dest = images_dir / rel
    base = ManifestRow(
        path=rel, label=cand.label, split=cand.split or "", sha256="", source=cand.source
    )
    try:
        sha, size = _copy(cand, dest, budget, limits)
    except _ReadFailed as exc:
        dest.unlink(missing_ok=True)
        return replace(base, path="", status="unreadable", reason=f"cannot read the file: {exc}")
    if size == 0:
        return replace(base, sha256=sha, status="empty_file", reason="file is empty (0 bytes)")
    return replace(base, sha256=sha, size=size)


def _probed(row: ManifestRow, images_dir: Path, max_pixels: int) -> ManifestRow:
    """The row completed with the probe's findings (size, format, mode or the problem)."""
    try:
        info = probe_image(images_dir / row.path, max_pixels=max_pixels)
    except ImageReadError as exc:  # not kept: a registered dataset holds only its images
        (images_dir / row.path).unlink(missing_ok=True)
        return replace(row, path="", status=exc.code, reason=exc.reason)
    return replace(row, width=info.width, height=info.height, format=info.format, mode=info.mode)


class _ReadFailed(Exception):
    """Reading one source file failed (it becomes an unreadable row, not an abort)."""


def _copy(cand: Candidate, dest: Path, budget: list[int], limits: IngestLimits) -> tuple[str, int]:
    """Stream ``cand`` to ``dest``; return (sha256, size). Enforces the byte limits as it goes."""
    digest = hashlib.sha256()
    size = 0
    try:
        handle: IO[bytes] = cand.opener()
    except Exception as exc:
        raise _ReadFailed(_error_text(exc)) from exc
    with handle, open(dest, "xb") as out:
        while True:
            try:
                chunk = handle.read(_CHUNK)
            except IngestError:  # the archive reader's own refusal ends the whole import
                raise
            except Exception as exc:  # zlib/CRC errors in a zip entry, I/O errors on a disk
                raise _ReadFailed(_error_text(exc)) from exc
            if not chunk:
                break
            size += len(chunk)
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise IngestError(budget_message(limits.max_total_bytes))
            if cand.declared_size is not None and size > cand.declared_size:
                raise IngestError(
                    f"The archive entry {cand.source!r} holds more data than its header declares, "
                    "a sign of a tampered archive; nothing was imported."
                )
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


def _error_text(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _slug(text: str, limit: int) -> str:
    """A file-system-safe rendering of untrusted text (letters and digits kept, any script)."""
    text = unicodedata.normalize("NFC", text)
    out = "".join(c if (c.isalnum() or c in "-_") else "_" for c in text)
    out = "_".join(p for p in out.split("_") if p)
    return out[:limit].strip("-_")


def _file_name(source: str) -> str:
    pure = PurePosixPath(source.replace("\\", "/"))
    suffix = pure.suffix.lower()
    suffix = suffix if suffix in IMAGE_EXTENSIONS else ""
    return (_slug(pure.stem, 60) or "image") + suffix


def _nothing_usable(rows: list[ManifestRow]) -> IngestError:
    shown = "; ".join(f"{r.source}: {r.reason}" for r in rows[:5])
    more = f" (and {len(rows) - 5} more)" if len(rows) > 5 else ""
    return IngestError(
        f"No usable images: none of the {len(rows)} image file(s) could be read ({shown}{more}). "
        "Check that the files are real, complete images."
    )


def _summary(report: HealthReport, split: SplitSpec, plan: Plan) -> dict[str, Any]:
    stats = report.stats
    return {
        "class_counts": stats["class_counts"],
        "split_totals": stats["split_totals"],
        "num_unusable": stats["num_unusable"],
        "num_ignored": stats["num_ignored"],
        "errors": len(report.errors),
        "warnings": len(report.warnings),
        "finding_codes": report.codes(),
        "layout": plan.layout,
        "user_split": plan.user_split,
        "split": split.to_dict(),
    }


def remove_stale_builds(tmp_dir: Path) -> None:
    """Builds left by a process that was killed mid-ingest (a day old: nobody owns them)."""
    cutoff = time.time() - _STALE_BUILD_SECONDS
    stale = ("ingest-*", "demo-src-*", "csv-upload-*", "predict-*")
    for path in [p for pattern in stale for p in tmp_dir.glob(pattern)]:
        try:
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass
