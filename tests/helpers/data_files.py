"""Helpers shared by the data tests: generated images, trees, zips, workspace snapshots.

(No tests here; the name keeps it with the data test files.)
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from finetune_core.store import Workspace


def image_bytes(
    seed: int = 0, size: tuple[int, int] = (32, 32), fmt: str = "JPEG", mode: str = "RGB", **save
) -> bytes:
    """A small noisy image; different seeds give different bytes (no accidental duplicates)."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, fmt, **save)
    return buffer.getvalue()


def write_image(
    path: Path, seed: int = 0, size: tuple[int, int] = (32, 32), fmt: str = "JPEG"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(seed, size, fmt))
    return path


def make_tree(root: Path, classes: dict[str, int], seed: int = 0, prefix: str = "") -> Path:
    """root/<prefix>/<class>/<class>_<i>.jpg with unique content per file."""
    n = seed * 10_000
    for label, count in classes.items():
        for i in range(count):
            n += 1
            write_image(root / prefix / label / f"img_{i:03d}.jpg", seed=n)
    return root


def make_zip(path: Path, entries: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def tree_entries(classes: dict[str, int], prefix: str = "", seed: int = 0) -> dict[str, bytes]:
    out = {}
    n = seed * 10_000
    for label, count in classes.items():
        for i in range(count):
            n += 1
            out[f"{prefix}{label}/img_{i:03d}.jpg"] = image_bytes(n)
    return out


def workspace_files(ws: Workspace) -> list[str]:
    """Every file and folder in the workspace except the database files."""
    out = []
    for dirpath, dirnames, filenames in os.walk(ws.root):
        for name in dirnames + filenames:
            rel = Path(dirpath, name).relative_to(ws.root).as_posix()
            if not rel.startswith("workspace.db"):
                out.append(rel)
    return sorted(out)


def assert_nothing_registered(ws: Workspace) -> None:
    """A failed ingest leaves no dataset row and no files."""
    assert ws.list_datasets() == []
    assert workspace_files(ws) == sorted(["cache", "datasets", "runs", "tmp"])
