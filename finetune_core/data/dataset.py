"""A registered dataset: its record, manifest, health report and image files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune_core.data.errors import DatasetNotFound
from finetune_core.data.health import HealthReport
from finetune_core.data.manifest import MANIFEST_NAME, ManifestRow, read_manifest
from finetune_core.fsutil import read_json
from finetune_core.runs import RunError, RunFolder
from finetune_core.store import DatasetRecord, StoreError, Workspace

IMAGES_DIR = "images"
HEALTH_NAME = "health.json"
DATASET_META = "dataset.json"
SPLITS = ("train", "val", "test")


class Dataset:
    """Read access to one dataset folder; the manifest is read once, on first use."""

    def __init__(self, workspace: Workspace, record: DatasetRecord) -> None:
        self.workspace = workspace
        self.record = record
        self.id = record.id
        self.root: Path = workspace.dataset_dir(record.id)
        self.images_dir = self.root / IMAGES_DIR
        self.class_names: list[str] = sorted(record.class_names)
        self.fingerprint: str = record.fingerprint
        self._index = {name: i for i, name in enumerate(self.class_names)}
        self._rows: list[ManifestRow] | None = None
        self._health: HealthReport | None = None
        self._meta: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Dataset(id={self.id!r}, name={self.name!r}, classes={len(self.class_names)})"

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def health(self) -> HealthReport:
        if self._health is None:
            self._health = HealthReport.from_dict(read_json(self.root / HEALTH_NAME, {}))
        return self._health

    @property
    def meta(self) -> dict[str, Any]:
        """dataset.json: source kind, layout, split spec, creation time."""
        if self._meta is None:
            self._meta = read_json(self.root / DATASET_META, {})
        return self._meta

    def all_rows(self) -> list[ManifestRow]:
        """Every imported file, including unusable ones (status other than ``ok``)."""
        if self._rows is None:
            self._rows = read_manifest(self.root / MANIFEST_NAME)
        return self._rows

    def rows(self, split: str | None = None) -> list[ManifestRow]:
        """Usable images (status ok), optionally of one split."""
        return [r for r in self.all_rows() if r.ok and (split is None or r.split == split)]

    def image_path(self, row: ManifestRow) -> Path:
        return self.images_dir / row.path

    def label_index(self, row: ManifestRow) -> int:
        return self._index[row.label]

    def items(self, split: str | None = None) -> list[tuple[Path, int]]:
        """(image path, label index) pairs for training code."""
        return [(self.image_path(r), self.label_index(r)) for r in self.rows(split)]

    def split_counts(self) -> dict[str, dict[str, int]]:
        """Usable images per split and class: every split and class appears, zeros included."""
        counts = {s: {c: 0 for c in self.class_names} for s in SPLITS}
        for row in self.rows():
            counts.setdefault(row.split, {c: 0 for c in self.class_names})[row.label] += 1
        return counts


def load_dataset(workspace: Workspace, id_or_name: str) -> Dataset:
    """The dataset with this id (or, failing that, this name). Raises DatasetNotFound."""
    key = (id_or_name or "").strip()
    record = None
    try:
        record = workspace.get_dataset(key)
    except StoreError:
        record = None
    record = record or workspace.find_dataset_by_name(key)
    if record is None:
        names = [r.name for r in workspace.list_datasets()[:10]]
        hint = (
            f" Available: {', '.join(names)}." if names else " The workspace has no datasets yet."
        )
        raise DatasetNotFound(f"No dataset with id or name {id_or_name!r}.{hint}")
    dataset = Dataset(workspace, record)
    if not (dataset.root / MANIFEST_NAME).is_file():
        raise DatasetNotFound(
            f"The files of dataset {record.name!r} ({record.id}) are missing from "
            f"{dataset.root}. Delete it and import the data again."
        )
    return dataset


def run_dataset(run: RunFolder, workspace: Workspace | None = None) -> Dataset:
    """The dataset a run trained on, from the workspace that holds it."""
    if workspace is None:
        root = run.workspace_root()
        if root is None:
            raise RunError(
                "Cannot find the workspace that holds this run's dataset; pass --workspace."
            )
        workspace = Workspace(root)
    try:
        return load_dataset(workspace, run.config.dataset)
    except DatasetNotFound as exc:
        raise RunError(
            f"The run's dataset ({run.config.dataset}) is no longer in the workspace: {exc}"
        ) from exc
