"""Render benchmark JSON into benchmarks/RESULTS.md (CPU and GPU sections kept apart)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

HEADER = """# Benchmark results

Reproduce the CPU section with `make bench` (`python -m benchmarks.run`), the GPU
section with `python benchmarks/gpu_bench.py` on one NVIDIA GPU. Ratios come from
contenders alternated in one process on the same data, model, image size, batch size
and threads; absolute numbers on shared machines are noise.
"""


def _fig(f: dict[str, float]) -> str:
    return f"{f['median']} (min {f['min']}, max {f['max']}, n={f['n']})"


def _yes(ok: Any) -> str:
    return "met" if ok else "NOT met"


def cpu_markdown(r: dict[str, Any]) -> str:
    env, data = r["environment"], r["data"]
    lines = [
        f"## CPU ({env['date']})",
        "",
        f"Machine: {env['machine']}; Python {env['python']}, torch {env['torch']}, "
        f"torchvision {env['torchvision']}, {env['threads']} threads.",
        f"Data: {data['train_images']} train / {data['val_images']} val generated JPEGs of "
        f"varied sizes, {data['classes']} classes; resnet18 at {data['image_size']} px, "
        f"batch {data['batch_size']}, both contenders from the same random initialisation.",
        "",
        "| case | ours | seed loop | ratio | target |",
        "|---|---|---|---|---|",
    ]
    if "a" in r:
        a = r["a"]
        lines.append(
            f"| a. linear probe, {r['size']['probe_epochs']} epochs (wall s) | {_fig(a['ours_seconds'])}"
            f" | {_fig(a['seed_seconds'])} | **{a['speedup']}x** faster | >= 10x: {_yes(a['met'])} |"
        )
        lines.append(
            f"| a. probe validation accuracy | {a['ours_val_accuracy']:.3f} | "
            f"{a['seed_val_accuracy']:.3f} | | within 2 points |"
        )
    if "b" in r:
        b = r["b"]
        for name, v in b["variants"].items():
            lines.append(
                f"| b. full fine-tune img/s, {name} | {_fig(v['images_per_second'])} | "
                f"{_fig(b['seed_images_per_second'])} | **{v['ratio_vs_seed']}x** | >= 1.3x |"
            )
        lines.append(f"| b. target (auto precision) | | | {b['ratio']}x | {_yes(b['met'])} |")
    if "b2" in r:
        b2 = r["b2"]
        lines.append(
            f"| b'. bf16 vs fp32 accuracy (probe) | bf16 {b2['bf16']:.3f} | fp32 {b2['off']:.3f} | "
            f"{b2['difference_points']:+.2f} points | stays accurate |"
        )
    if "c" in r:
        c = r["c"]
        lines.append(
            f"| c. JobManager + 2 snapshots/s vs bare trainer (img/s) | {_fig(c['managed_images_per_second'])}"
            f" | bare {_fig(c['bare_images_per_second'])} | {c['ratio']}x{_pairs(c)} | >= 0.99x: {_yes(c['met'])} |"
        )
    if "d" in r:
        d = r["d"]
        lines.append(
            f"| d. submit -> first progress snapshot (s) | {_fig(d['submit_to_first_snapshot_seconds'])}"
            f" | | | < 3 s: {_yes(d['met'])} |"
        )
        lines.append(
            f"| d. stop request -> run STOPPED (s) | {_fig(d['stop_to_stopped_seconds'])}, "
            f"steps finished after the request: {d.get('steps_finished_after_stop', 'n/a')} | | | "
            "< 1 batch: only the batch in progress finishes (also tested) |"
        )
    if "e" in r:
        e = r["e"]
        ing = e["ingest"]
        lines.append(
            f"| e. ingest + health, {ing['images']} JPEGs | {ing['images_per_s']} img/s, "
            f"peak RSS growth {ing['peak_rss_growth_mb']} MB | | | flat memory |"
        )
        lines.append(
            f"| e. decode-cache build | {e['decode_cache_images_per_second']} img/s | | | |"
        )
        lines.append(
            f"| e. feature cache (probe run incl. model build) | "
            f"{e['feature_cache_images_per_second_upper_bound']} img/s | | | |"
        )
        lines.append(
            f"| e. epoch seconds at 1x/2x/4x data | {e['epoch_seconds_by_size']} | | "
            f"4x/1x = {e['epoch_time_4x_over_1x']} | linear (4.0) |"
        )
        s = e["spill"]
        lines.append(
            f"| e. decode cache of {s['images']} images at {s['image_size']} px ({s['cache_mb']} MB) |"
            f" peak RSS growth {s['peak_growth_mb']} MB, memory-mapped={s['memory_mapped']} | | |"
            f" under the {s['ram_budget_mb']} MB budget: {_yes(s['met'])} |"
        )
    if "f" in r:
        f = r["f"]
        lines.append(
            f"| f. runs page with {f['runs']} runs | render {f.get('runs_page_render_seconds', 'n/a')} s, "
            f"list_runs {f['list_runs_seconds']} s | | | < 1 s: {_yes(f['met'])} |"
        )
    return "\n".join(lines) + "\n"


def _replace_section(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body}{end}"
    if start in text:
        return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    return text.rstrip() + "\n\n" + block + "\n"


def write_section(name: str, body: str, path: Path) -> None:
    text = path.read_text() if path.exists() else HEADER
    path.write_text(_replace_section(text, name, body))


def write_cpu_section(results: dict[str, Any], path: Path) -> None:
    write_section("cpu", cpu_markdown(results), path)


def _pairs(case: dict[str, Any]) -> str:
    """The spread of per-pair ratios (managed / bare, run back to back in alternating order)."""
    pairs = case.get("pair_ratios")
    if not pairs:
        return ""
    return f" (pairs min {pairs['min']}, max {pairs['max']}, n={pairs['n']})"
