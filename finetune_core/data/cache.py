"""The decoded-image cache: every image decoded and resized once into uint8 tensors.

The pixels are exactly ``preprocess.preprocess_for_inference``'s (full decode, the one
resize and crop), so a cached image equals what predict and the exports compute from
the original file: the cache is lossless with respect to inference.

Training then reads batches straight from memory (or a memory-mapped file when the
cache is larger than the RAM budget) and augments them on the training device, so no
epoch decodes a JPEG again. Cache files are keyed by dataset fingerprint, split and
image size, and written atomically, so a crash never leaves a half cache in use.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from finetune_core.data.decode_budget import decoder_threads
from finetune_core.data.preprocess import (
    PREPROCESS_VERSION,
    preprocess_for_inference,
    resize_center_crop,
    to_uint8_chw,
)
from finetune_core.fsutil import atomic_write

# Re-exported: the resize and crop live in preprocess.py, the one preprocessing.
__all__ = ["DecodedImages", "build_decoded", "decoded_split", "resize_center_crop", "to_uint8_chw"]

DEFAULT_RAM_BUDGET_MB = int(os.environ.get("FINETUNE_CACHE_RAM_MB", "4096"))
_MAX_THREADS = 32


@dataclass
class DecodedImages:
    """Images of one split as uint8 (N, 3, S, S) plus int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    memory_mapped: bool = False
    # A spilled cache: its file, read batch by batch with pread (see take).
    file: BinaryIO | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, index: torch.Tensor | slice) -> torch.Tensor:
        """``images[index]`` as a new tensor. A spilled cache reads just those rows from its
        file: the OS page cache keeps them warm, and this process's resident memory stays
        at one batch however many epochs read it (reading through the memory map would
        leave every page it touched resident)."""
        if self.file is None or self.images.device.type != "cpu":
            return self.images[index]
        n, *shape = self.images.shape
        rows = range(n)[index] if isinstance(index, slice) else index.tolist()
        out = np.empty((len(rows), *shape), dtype=np.uint8)
        row_bytes = out[0].nbytes if len(rows) else 0
        fd = self.file.fileno()
        if isinstance(rows, range) and rows.step == 1:  # a plain slice: one contiguous read
            _read_exactly(fd, out, rows.start * row_bytes if len(rows) else 0)
        else:
            for j, i in enumerate(rows):
                _read_exactly(fd, out[j], int(i) * row_bytes)
        return torch.from_numpy(out)


def _read_exactly(fd: int, into: np.ndarray, offset: int) -> None:
    view = into.data.cast("B")
    while view:
        got = os.preadv(fd, [view], offset)
        if got <= 0:
            raise OSError(f"the decoded-image cache file ended early at byte {offset}")
        view, offset = view[got:], offset + got


def _cache_key(fingerprint: str, split: str, size: int, paths: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join(paths).encode()).hexdigest()[:12]
    return f"{fingerprint[:16]}-{split}-{size}-p{PREPROCESS_VERSION}-{digest}"


def build_decoded(
    paths: Sequence[Path],
    labels: Sequence[int],
    size: int,
    *,
    load: Callable[[Path], Image.Image] | None,
    cache_file: Path | None = None,
    ram_budget_mb: int = DEFAULT_RAM_BUDGET_MB,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    decode: Callable[[Path, int], np.ndarray] | None = None,
) -> DecodedImages:
    """Decode ``paths`` once into a uint8 tensor, reusing ``cache_file`` when present.

    Above ``ram_budget_mb`` the images live in a memory-mapped file instead of RAM.
    ``decode(path, size)`` gives one image's (3, size, size) pixels (default: ``load``
    then :func:`to_uint8_chw`). Threads follow the cores this process may use; how many
    decode at once is bounded by the process's decode memory budget (images.py).
    """
    n = len(paths)
    nbytes = n * 3 * size * size
    label_tensor = torch.as_tensor(list(labels), dtype=torch.int64)
    rel = [str(p) for p in paths]
    budget = ram_budget_mb * 2**20
    spill = nbytes > budget
    if cache_file is not None and cache_file.exists() and cache_file.stat().st_size == nbytes:
        return _open_cached(cache_file, n, size, label_tensor, rel, spill)

    threads = workers or decoder_threads(_MAX_THREADS)
    chw = decode or _loaded_chw(load)
    if spill:
        if cache_file is None:
            raise ValueError("A cache larger than the RAM budget needs a cache_file to spill to.")
        _decode_to_file(paths, size, chw, cache_file, threads, progress)
        return _open_cached(cache_file, n, size, label_tensor, rel, True)

    out = np.empty((n, 3, size, size), dtype=np.uint8)

    def decode_one(i: int) -> None:
        out[i] = chw(Path(paths[i]), size)

    done = 0
    # Pillow releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(decode_one, range(n)):
            done += 1
            if progress is not None and (done % 32 == 0 or done == n):
                progress(done, n)

    if cache_file is not None:
        atomic_write(cache_file, lambda h: h.write(out.tobytes()))
    return DecodedImages(torch.from_numpy(out), label_tensor, rel)


def _loaded_chw(
    load: Callable[[Path], Image.Image] | None,
) -> Callable[[Path, int], np.ndarray]:
    def chw(path: Path, size: int) -> np.ndarray:
        if load is None:
            raise ValueError("build_decoded needs load or decode to build a cache.")
        return to_uint8_chw(load(path), size)

    return chw


def _decode_to_file(
    paths: Sequence[Path],
    size: int,
    chw: Callable[[Path, int], np.ndarray],
    cache_file: Path,
    threads: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Decode ``paths`` into ``cache_file`` a chunk at a time, appended with plain writes:
    the file's pages go to the OS page cache, never into this process's memory."""
    n = len(paths)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".partial")
    chunk = max(threads * 8, 64)
    buffer = np.empty((chunk, 3, size, size), dtype=np.uint8)
    try:
        with open(tmp, "wb") as handle, ThreadPoolExecutor(max_workers=threads) as pool:
            for start in range(0, n, chunk):
                count = min(chunk, n - start)

                def decode_into(j: int, start: int = start) -> None:
                    buffer[j] = chw(Path(paths[start + j]), size)

                list(pool.map(decode_into, range(count)))
                handle.write(buffer[:count].tobytes())
                if progress is not None:
                    progress(start + count, n)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, cache_file)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a stop leaves no half cache behind
        raise


def _open_cached(
    path: Path,
    n: int,
    size: int,
    labels: torch.Tensor,
    paths: list[str],
    spill: bool,
) -> DecodedImages:
    if spill:
        # torch cannot wrap a read-only buffer; a private (copy-on-write) mapping keeps the
        # file untouched. Batches are read with take(), not through the mapping.
        handle = open(path, "rb")  # noqa: SIM115 - lives as long as the cache object
        mm = np.memmap(handle, dtype=np.uint8, mode="c", shape=(n, 3, size, size))
        return DecodedImages(torch.from_numpy(mm), labels, paths, memory_mapped=True, file=handle)
    data = np.fromfile(path, dtype=np.uint8).reshape(n, 3, size, size)
    return DecodedImages(torch.from_numpy(data), labels, paths)


def decoded_split(
    dataset,  # finetune_core.data.Dataset
    split: str,
    size: int,
    cache_dir: Path,
    *,
    ram_budget_mb: int = DEFAULT_RAM_BUDGET_MB,
    progress: Callable[[int, int], None] | None = None,
) -> DecodedImages:
    """The decoded cache for one split of a workspace dataset."""

    rows = dataset.rows(split)
    paths = [dataset.image_path(r) for r in rows]
    labels = [dataset.label_index(r) for r in rows]
    key = _cache_key(dataset.fingerprint, split, size, [r.path for r in rows])
    decoded = build_decoded(
        paths,
        labels,
        size,
        load=None,
        decode=preprocess_for_inference,
        cache_file=Path(cache_dir) / "decoded" / f"{key}.u8",
        ram_budget_mb=ram_budget_mb,
        progress=progress,
    )
    decoded.paths = [r.path for r in rows]
    return decoded
