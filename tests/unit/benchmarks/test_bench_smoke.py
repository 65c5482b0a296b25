"""The benchmark suite at toy size, so `make bench` cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_benchmark_runs_at_toy_size(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--toy", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for case in ("a", "b", "b2", "c", "d", "e", "f"):
        assert case in results, case
    assert results["a"]["speedup"] > 0 and results["a"]["seed_val_accuracy"] is not None
    assert all(v["ratio_vs_seed"] > 0 for v in results["b"]["variants"].values())
    assert results["c"]["ratio"] > 0
    assert results["d"]["submit_to_first_snapshot_seconds"]["median"] > 0
    assert results["e"]["spill"]["memory_mapped"] is True  # toy budget 0 MB forces the spill
    f = results["f"]
    assert f["runs"] == 50 and not f.get("page_errors") and "runs_page_error" not in f, f
    assert f["runs_page_render_seconds"] > 0 and f["page_tables"] >= 1, f
    assert "Benchmark results" in (ROOT / "benchmarks" / "RESULTS.md").read_text()
