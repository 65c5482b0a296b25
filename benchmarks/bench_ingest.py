"""Ingest throughput and memory: N small JPEGs (64-320 px) in 10 class folders.

    python -m benchmarks.bench_ingest            # 5,000 images
    python -m benchmarks.bench_ingest --n 1000 --n 5000 --json artifacts/bench_ingest.json

Times ``ingest`` (copy + sha256 + verify + full decode of every file, split, health
report) and samples the process RSS every few milliseconds, so "peak RSS growth" is
the most memory the ingest ever held above what the process used before it started.
Streaming one file at a time keeps that flat as N grows.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from finetune_core.data import ingest
from finetune_core.store import Workspace

CLASSES = 10


def generate(folder: Path, n: int, seed: int = 0) -> int:
    """Write n JPEGs of random sizes (64-320 px per side); return the total bytes."""
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        w, h = (int(v) for v in rng.integers(64, 321, 2))
        c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        img = c1 * (1 - t) + c2 * t + rng.normal(0, 8, (h, 1, 3))
        path = folder / f"class_{i % CLASSES:02d}" / f"img_{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=85)
        total += path.stat().st_size
    return total


class PeakRss:
    """Samples this process's RSS in a thread; ``peak`` is the highest value seen."""

    def __init__(self, interval: float = 0.005) -> None:
        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def run(n: int, workdir: Path) -> dict[str, float | int]:
    source = workdir / f"images-{n}"
    started = time.perf_counter()
    data_bytes = generate(source, n)
    generate_s = time.perf_counter() - started
    workspace = Workspace(workdir / f"ws-{n}")
    baseline = psutil.Process().memory_info().rss
    with PeakRss() as rss:
        started = time.perf_counter()
        result = ingest(workspace, source, name=f"bench-{n}")
        seconds = time.perf_counter() - started
    assert result.dataset.record.num_images == n, result.health.to_dict()
    shutil.rmtree(source)
    return {
        "images": n,
        "dataset_mb": round(data_bytes / 1e6, 1),
        "generate_s": round(generate_s, 2),
        "ingest_s": round(seconds, 2),
        "images_per_s": round(n / seconds, 1),
        "mb_per_s": round(data_bytes / 1e6 / seconds, 1),
        "rss_before_mb": round(baseline / 2**20, 1),
        "peak_rss_growth_mb": round((rss.peak - baseline) / 2**20, 1),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, action="append", help="number of images (repeatable; default 5000)"
    )
    parser.add_argument(
        "--workdir", help="where to generate images (default: a temp folder, removed after)"
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    sizes = args.n or [5000]
    owned = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ingest-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for n in sizes:
            results.append(run(n, workdir))
            r = results[-1]
            print(
                f"ingest {r['images']:>6,} JPEGs ({r['dataset_mb']} MB): {r['ingest_s']:.2f} s, "
                f"{r['images_per_s']:,.0f} images/s, {r['mb_per_s']} MB/s, "
                f"peak RSS growth {r['peak_rss_growth_mb']} MB"
            )
    finally:
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
