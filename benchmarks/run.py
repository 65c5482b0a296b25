"""`make bench`: our trainer side by side with the plain PyTorch loop, on one machine.

    python -m benchmarks.run                 # the full CPU suite (< 10 min on 2 cores)
    python -m benchmarks.run --toy           # seconds; what CI runs so this cannot rot
    python -m benchmarks.run --cases a,b     # a subset

Every comparison alternates the two contenders in one process, on the same data,
model, image size, batch size and thread count, and reports ratios: absolute times
on shared machines are noise, ratios are not. Results go to benchmarks/RESULTS.md
(the CPU section) and benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image

from benchmarks.seed_loop import seed_loop
from finetune_core.config import RunConfig
from finetune_core.data import ingest, load_dataset, make_demo_folder
from finetune_core.device import device_info
from finetune_core.jobs.manager import JobManager
from finetune_core.store import Workspace
from finetune_core.training.events import Callback
from finetune_core.training.trainer import Trainer

HERE = Path(__file__).resolve().parent


@dataclass
class Size:
    """How big each case is; ``toy`` shrinks everything for the CI smoke test."""

    per_class: int = 110
    classes: int = 4
    image_size: int = 224
    batch_size: int = 32
    probe_epochs: int = 10
    repeats: int = 3
    ft_batches: int = 4
    # case c: a run long enough that a fresh run process's first-batch warm-up (kernel
    # selection, allocator) is not most of the epoch; more pairs, as the ratio is near 1
    overhead_images: int = 256
    overhead_repeats: int = 5
    scale_image_size: int = 64
    ingest_images: int = 5000
    cache_images: int = 10_000
    ram_budget_mb: int = 512


TOY = Size(
    per_class=6,
    classes=2,
    image_size=32,
    batch_size=8,
    probe_epochs=2,
    repeats=1,
    ft_batches=2,
    overhead_images=16,
    overhead_repeats=1,
    scale_image_size=32,
    ingest_images=40,
    cache_images=60,
    ram_budget_mb=0,
)


@dataclass
class Figures:
    """min / median / max of repeated measurements."""

    values: list[float] = field(default_factory=list)

    def add(self, v: float) -> None:
        self.values.append(float(v))

    def summary(self, digits: int = 3) -> dict[str, float]:
        v = self.values
        return {
            "min": round(min(v), digits),
            "median": round(statistics.median(v), digits),
            "max": round(max(v), digits),
            "n": len(v),
        }


# ---------------------------------------------------------------------------- data
def make_bench_folder(root: Path, size: Size, seed: int = 0) -> Path:
    """JPEGs of varied sizes in train/ and val/ class folders (ImageFolder layout)."""
    source = make_demo_folder(
        root / "src",
        classes=size.classes,
        per_class=size.per_class,
        size=160 if size.image_size > 64 else 48,
        seed=seed,
    )
    rng = np.random.default_rng(seed)
    out = root / "data"
    for class_dir in sorted(source.iterdir()):
        files = sorted(class_dir.iterdir())
        n_val = max(1, len(files) // 5)
        for i, path in enumerate(files):
            split = "val" if i < n_val else "train"
            dest = out / split / class_dir.name / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            image = Image.open(path)
            if size.image_size > 64:  # varied sizes and aspect ratios, like real photos
                w, h = (int(v) for v in rng.integers(180, 420, 2))
                image = image.resize((w, h), Image.Resampling.BILINEAR)
            image.save(dest, "JPEG", quality=90)
    shutil.rmtree(root / "src")
    return out


def shared_init(arch: str, num_classes: int, path: Path) -> Path:
    """One random initialisation both contenders start from (no pretrained weights offline)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None)
    torch.save(model.state_dict(), path)
    return path


def threads() -> int:
    return torch.get_num_threads()


# ---------------------------------------------------------------------------- cases
def case_probe(ctx: dict[str, Any], size: Size) -> dict[str, Any]:
    """a. Linear probe: our feature-cache probe vs the seed loop training only the head."""
    ws: Workspace = ctx["ws"]
    ours_s, seed_s = Figures(), Figures()
    ours_acc = seed_acc = None
    for r in range(size.repeats):
        shutil.rmtree(ws.cache_dir, ignore_errors=True)  # no cached features or images
        cfg = RunConfig(
            dataset=ctx["dataset"].id,
            model="resnet18",
            weights=str(ctx["init"]),
            strategy="probe",
            epochs=size.probe_epochs,
            image_size=size.image_size,
            batch_size=size.batch_size,
            lr=1e-2,
            augmentation="none",
            early_stopping=False,
        )
        run_dir = ctx["tmp"] / f"probe-{r}"
        run_dir.mkdir()
        start = time.perf_counter()
        result = Trainer(cfg, ctx["dataset"], run_dir, ws.cache_dir).fit()
        ours_s.add(time.perf_counter() - start)
        ours_acc = result.best_val_accuracy
        if r == 0:  # the seed loop is slow; once is enough for a 10x comparison
            start = time.perf_counter()
            seed = seed_loop(
                ctx["folder"] / "train",
                ctx["folder"] / "val",
                arch="resnet18",
                state_dict=torch.load(ctx["init"], weights_only=True),
                epochs=size.probe_epochs,
                batch_size=size.batch_size,
                image_size=size.image_size,
                head_only=True,
                warmup_batches=0,
            )
            seed_s.add(time.perf_counter() - start)
            seed_acc = seed.val_accuracy
    ratio = statistics.median(seed_s.values) / statistics.median(ours_s.values)
    return {
        "ours_seconds": ours_s.summary(),
        "seed_seconds": seed_s.summary(),
        "speedup": round(ratio, 2),
        "ours_val_accuracy": ours_acc,
        "seed_val_accuracy": seed_acc,
        "target": "speedup >= 10, accuracy within 2 points",
        "met": ratio >= 10 and ours_acc is not None and ours_acc >= seed_acc - 0.02,
    }


def _ours_full_images_per_second(
    ctx, size: Size, precision: str, channels_last: bool
) -> tuple[float, float | None]:
    """Training images/s over ``ft_batches`` batches of a full fine-tune (decode cache warm)."""
    ws: Workspace = ctx["ws"]
    stop = threading.Event()
    marks: list[float] = []

    class Clock(Callback):
        def after_batch(self, trainer):
            if trainer.phase.trains:
                marks.append(time.perf_counter())
                if len(marks) > size.ft_batches:
                    stop.set()

    cfg = RunConfig(
        dataset=ctx["dataset"].id,
        model="resnet18",
        weights=str(ctx["init"]),
        strategy="full",
        epochs=1,
        image_size=size.image_size,
        batch_size=size.batch_size,
        lr=1e-3,
        optimizer="sgd",
        augmentation="none",
        mixed_precision=precision,
        channels_last=channels_last,
        early_stopping=False,
    )
    run_dir = Path(tempfile.mkdtemp(dir=ctx["tmp"]))
    Trainer(cfg, ctx["dataset"], run_dir, ws.cache_dir, callbacks=[Clock()], stop_event=stop).fit()
    # the first batch pays one-time costs; time the following ones
    return size.batch_size * (len(marks) - 1) / (marks[-1] - marks[0]), None


def case_finetune(ctx: dict[str, Any], size: Size) -> dict[str, Any]:
    """b. Full fine-tune training images/s: ours (auto precision) vs the seed loop."""
    variants = {
        "ours (auto: bf16 where the CPU has it, channels_last)": ("auto", True),
        "ours fp32, contiguous": ("off", False),
        "ours bf16, contiguous": ("bf16", False),
    }
    figs = {name: Figures() for name in variants}
    seed_f = Figures()
    init = torch.load(ctx["init"], weights_only=True)
    for _ in range(size.repeats):
        for name, (precision, cl) in variants.items():
            figs[name].add(_ours_full_images_per_second(ctx, size, precision, cl)[0])
        res = seed_loop(
            ctx["folder"] / "train",
            None,
            arch="resnet18",
            state_dict=init,
            epochs=1,
            batch_size=size.batch_size,
            image_size=size.image_size,
            max_batches=size.ft_batches,
        )
        seed_f.add(res.images_per_second)
    seed_med = statistics.median(seed_f.values)
    out: dict[str, Any] = {"seed_images_per_second": seed_f.summary(2), "variants": {}}
    for name, f in figs.items():
        out["variants"][name] = {
            "images_per_second": f.summary(2),
            "ratio_vs_seed": round(statistics.median(f.values) / seed_med, 2),
        }
    best = out["variants"][next(iter(variants))]["ratio_vs_seed"]
    out["ratio"] = best
    out["target"] = "ratio >= 1.3"
    out["met"] = best >= 1.3
    return out


def case_accuracy_bf16(ctx: dict[str, Any], size: Size) -> dict[str, Any]:
    """b'. Does bf16 autocast keep accuracy? The same short fine-tune in fp32 and bf16."""
    out = {}
    for precision in ("off", "bf16"):
        cfg = RunConfig(
            dataset=ctx["dataset"].id,
            model="resnet18",
            weights=str(ctx["init"]),
            strategy="probe",
            epochs=size.probe_epochs,
            image_size=size.image_size,
            batch_size=size.batch_size,
            lr=1e-2,
            augmentation="none",
            mixed_precision=precision,
            early_stopping=False,
        )
        run_dir = Path(tempfile.mkdtemp(dir=ctx["tmp"]))
        out[precision] = (
            Trainer(cfg, ctx["dataset"], run_dir, ctx["ws"].cache_dir).fit().best_val_accuracy
        )
    out["difference_points"] = round(100 * (out["bf16"] - out["off"]), 2)
    return out


def case_overhead(ctx: dict[str, Any], size: Size) -> dict[str, Any]:
    """c. The same run submitted to the JobManager (trained by its own run process), with a
    snapshot read twice a second, vs the bare trainer in this process."""
    ws: Workspace = ctx["ws"]
    sub = ctx["small_dataset"]
    bare_f, managed_f = Figures(), Figures()

    def cfg() -> RunConfig:
        return RunConfig(
            dataset=sub.id,
            model="resnet18",
            weights=str(ctx["init"]),
            strategy="full",
            epochs=1,
            image_size=size.image_size,
            batch_size=size.batch_size,
            lr=1e-3,
            augmentation="light",
            early_stopping=False,
        )

    def bare() -> float:
        run_dir = Path(tempfile.mkdtemp(dir=ctx["tmp"]))
        return Trainer(cfg(), sub, run_dir, ws.cache_dir).fit().history[-1]["images_per_second"]

    def managed() -> float:
        run_id = manager.submit(cfg())
        while manager.is_active(run_id):
            manager.snapshot(run_id)
            time.sleep(0.5)
        return _history_ips(ws, run_id)

    manager = JobManager(ws)
    pairs = Figures()
    try:
        bare()  # warm-up: caches and allocator, counted for neither side
        for i in range(size.overhead_repeats):
            # alternate which goes first, so drift in the machine's load favours neither
            if i % 2 == 0:
                b, m = bare(), managed()
            else:
                m, b = managed(), bare()
            bare_f.add(b)
            managed_f.add(m)
            pairs.add(m / b)
    finally:
        manager.shutdown()
    ratio = statistics.median(pairs.values)
    return {
        "bare_images_per_second": bare_f.summary(2),
        "managed_images_per_second": managed_f.summary(2),
        "pair_ratios": pairs.summary(3),
        "ratio": round(ratio, 3),
        "target": "ratio >= 0.99",
        "met": ratio >= 0.99,
    }


def _history_ips(ws: Workspace, run_id: str) -> float:
    from finetune_core.jobs.records import read_history

    return read_history(ws, run_id)[-1]["images_per_second"]


def case_responsiveness(ctx: dict[str, Any], size: Size) -> dict[str, Any]:
    """d. submit -> first progress snapshot, and how many batches run after a stop request."""
    ws: Workspace = ctx["ws"]
    first_f, stop_f, batches_after = Figures(), Figures(), []
    manager = JobManager(ws)
    try:
        for _ in range(size.repeats):
            cfg = RunConfig(
                dataset=ctx["dataset"].id,
                model="resnet18",
                weights=str(ctx["init"]),
                strategy="full",
                epochs=3,
                image_size=size.image_size,
                batch_size=size.batch_size,
                lr=1e-3,
                early_stopping=False,
            )
            start = time.perf_counter()
            run_id = manager.submit(cfg)
            while True:
                snap = manager.snapshot(run_id)
                if snap.phase:
                    first_f.add(time.perf_counter() - start)
                    break
                time.sleep(0.005)
            while manager.snapshot(run_id).step < 2 or manager.snapshot(run_id).epoch < 1:
                time.sleep(0.01)
            step_at_stop = manager.snapshot(run_id).step
            t_stop = time.perf_counter()
            manager.stop(run_id)
            manager.wait(run_id, timeout=300)
            stop_f.add(time.perf_counter() - t_stop)
            history = manager.snapshot(run_id)
            batches_after.append(max(0, (history.step or step_at_stop) - step_at_stop))
    finally:
        manager.shutdown()
    return {
        "submit_to_first_snapshot_seconds": first_f.summary(),
        "stop_to_stopped_seconds": stop_f.summary(),
        # steps completed after the request: 1 is the batch that was running, finished
        "steps_finished_after_stop": batches_after,
        "note": "stop latency includes saving the model and evaluating nothing; at most the current batch runs",
        "target": "first snapshot < 3 s",
        "met": statistics.median(first_f.values) < 3,
    }


def case_scale(ctx: dict[str, Any], size: Size) -> dict[str, Any]:
    """e. Ingest rate, cache build rates, epoch time vs dataset size, RAM budget spill."""
    out: dict[str, Any] = {}
    from benchmarks import bench_ingest

    out["ingest"] = bench_ingest.run(size.ingest_images, ctx["tmp"] / "ingest")
    # decode and feature cache build rates on the bench dataset
    from finetune_core.data.cache import decoded_split

    ds, ws = ctx["dataset"], ctx["ws"]
    shutil.rmtree(ws.cache_dir / "decoded", ignore_errors=True)
    n = len(ds.rows("train"))
    start = time.perf_counter()
    decoded_split(ds, "train", size.image_size, ws.cache_dir)
    out["decode_cache_images_per_second"] = round(n / (time.perf_counter() - start), 1)
    shutil.rmtree(ws.cache_dir / "features", ignore_errors=True)
    cfg = RunConfig(
        dataset=ds.id,
        model="resnet18",
        weights=str(ctx["init"]),
        strategy="probe",
        epochs=1,
        image_size=size.image_size,
        batch_size=size.batch_size,
        augmentation="none",
        early_stopping=False,
    )
    start = time.perf_counter()
    Trainer(cfg, ds, Path(tempfile.mkdtemp(dir=ctx["tmp"])), ws.cache_dir).fit()
    out["feature_cache_images_per_second_upper_bound"] = round(
        (n + len(ds.rows("val"))) / (time.perf_counter() - start), 1
    )
    # epoch time at 1x, 2x, 4x the dataset (full fine-tune at a small image size)
    epoch_s = {}
    for mult in (1, 2, 4):
        folder = ctx["tmp"] / f"scale-{mult}"
        for split in ("train", "val"):
            for class_dir in (ctx["folder"] / split).iterdir():
                dest = folder / split / class_dir.name
                dest.mkdir(parents=True, exist_ok=True)
                for copy in range(mult):
                    for f in class_dir.iterdir():
                        # re-encode with a per-copy pixel change so copies are not duplicates
                        im = Image.open(f).convert("RGB")
                        arr = np.asarray(im).copy()
                        arr[0, 0, 0] = (int(arr[0, 0, 0]) + copy) % 256
                        Image.fromarray(arr).save(dest / f"{copy}_{f.name}", "JPEG", quality=95)
        sub = ingest(ws, folder, name=f"scale-{mult}").dataset
        cfg = RunConfig(
            dataset=sub.id,
            model="resnet18",
            weights=str(ctx["init"]),
            strategy="full",
            epochs=2,
            image_size=size.scale_image_size,
            batch_size=size.batch_size,
            augmentation="light",
            early_stopping=False,
        )
        res = Trainer(cfg, sub, Path(tempfile.mkdtemp(dir=ctx["tmp"])), ws.cache_dir).fit()
        epoch_s[f"{mult}x ({len(sub.rows('train'))} images)"] = round(res.history[-1]["seconds"], 2)
    out["epoch_seconds_by_size"] = epoch_s
    values = list(epoch_s.values())
    out["epoch_time_4x_over_1x"] = round(values[2] / values[0], 2)
    out["spill"] = _spill_rss(ctx, size)
    return out


SPILL_SCRIPT = r"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
from PIL import Image
from finetune_core.data.cache import build_decoded
n, size, budget, folder, cache = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])
paths = sorted(folder.iterdir())
paths = [paths[i % len(paths)] for i in range(n)]
def hwm():  # VmHWM: peak RSS of this process image (ru_maxrss survives exec on Linux)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
# the same operations on a small tensor first: torch's code pages are not the cache
small = torch.zeros(64, 3, 8, 8, dtype=torch.uint8)
small[torch.randperm(64)[:32]].float().mean()
base = hwm()
t = time.perf_counter()
d = build_decoded(paths, [0] * n, size, load=lambda p: Image.open(p).convert("RGB"), cache_file=cache, ram_budget_mb=budget)
# read through the whole cache twice in shuffled batches, as training epochs do
total = 0
for epoch in range(2):
    order = torch.randperm(n)
    for s in range(0, n, 32):
        total += int(d.take(order[s:s + 32]).float().mean() > 0)
secs = time.perf_counter() - t
peak = hwm()
print(json.dumps({"images": n, "image_size": size, "cache_mb": round(n * 3 * size * size / 2**20, 1),
                  "ram_budget_mb": budget, "memory_mapped": d.memory_mapped,
                  "baseline_rss_mb": round(base, 1), "peak_rss_mb": round(peak, 1),
                  "peak_growth_mb": round(peak - base, 1), "seconds": round(secs, 1)}))
"""


def _spill_rss(ctx: dict[str, Any], size: Size) -> dict[str, Any]:
    """Peak RSS of a fresh process decoding ``cache_images`` images under a RAM budget."""
    folder = ctx["folder"] / "train" / sorted(os.listdir(ctx["folder"] / "train"))[0]
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SPILL_SCRIPT,
            str(size.cache_images),
            str(size.image_size),
            str(size.ram_budget_mb),
            str(folder),
            str(ctx["tmp"] / "spill.u8"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["met"] = result["memory_mapped"] and result["peak_growth_mb"] < result["ram_budget_mb"]
    return result


def case_listing(ctx: dict[str, Any], size: Size) -> dict[str, Any]:
    """f. The runs page with 1,000 runs in the workspace (AppTest, real page code)."""
    from finetune_core.store import RunRecord, RunStatus, new_id

    ws_root = ctx["tmp"] / "ws-1000"
    ws = Workspace(ws_root)
    for i in range(1000 if size.repeats > 1 else 50):
        ws.add_run(
            RunRecord(
                id=f"{new_id('r')}-{i}",
                status=RunStatus.SUCCEEDED,
                name=f"run {i}",
                model="resnet18",
                strategy="probe",
                best_val_accuracy=0.5,
                epochs_run=3,
                train_seconds=12.0,
                creator="bench",
            )
        )
    start = time.perf_counter()
    runs = ws.list_runs()
    list_s = time.perf_counter() - start
    out: dict[str, Any] = {"runs": len(runs), "list_runs_seconds": round(list_s, 4)}
    try:
        from streamlit.testing.v1 import AppTest

        os.environ["FINETUNE_WORKSPACE"] = str(ws_root)
        at = AppTest.from_file(str(HERE.parent / "app.py"), default_timeout=60)
        at.run()
        at.switch_page("views/runs.py")
        start = time.perf_counter()
        at.run()
        out["runs_page_render_seconds"] = round(time.perf_counter() - start, 3)
        out["page_errors"] = [e.value for e in at.exception]
        out["page_tables"] = len(at.dataframe)  # a page that renders nothing cannot pass
    except Exception as exc:  # report, do not hide, a page that cannot render
        out["runs_page_error"] = f"{type(exc).__name__}: {exc}"
    out["target"] = "runs page renders 1,000 runs in < 1 s"
    out["met"] = (
        out.get("runs_page_render_seconds", 99) < 1
        and not out.get("page_errors")
        and out.get("page_tables", 0) >= 1
    )
    return out


CASES: dict[str, Callable[[dict[str, Any], Size], dict[str, Any]]] = {
    "a": case_probe,
    "b": case_finetune,
    "b2": case_accuracy_bf16,
    "c": case_overhead,
    "d": case_responsiveness,
    "e": case_scale,
    "f": case_listing,
}


def environment() -> dict[str, Any]:
    info = device_info()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {info.name}, {info.memory_gb} GB RAM, bf16={info.bf16}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": threads(),
    }


def run(cases: list[str], size: Size, keep: Path | None = None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ftbench-"))
    try:
        ws = Workspace(tmp / "ws")
        folder = make_bench_folder(tmp / "bench", size)
        dataset = ingest(ws, folder, name="bench").dataset
        small = ingest(
            ws, _subset(folder, tmp / "small", size.overhead_images), name="small"
        ).dataset
        init = shared_init("resnet18", size.classes, tmp / "init.pt")
        ctx = {
            "ws": ws,
            "folder": folder,
            "dataset": load_dataset(ws, dataset.id),
            "small_dataset": small,
            "init": init,
            "tmp": tmp,
        }
        results: dict[str, Any] = {"environment": environment(), "size": size.__dict__}
        results["data"] = {
            "train_images": len(dataset.rows("train")),
            "val_images": len(dataset.rows("val")),
            "classes": size.classes,
            "image_size": size.image_size,
            "batch_size": size.batch_size,
        }
        for name in cases:
            start = time.perf_counter()
            print(f"case {name} ...", flush=True)
            results[name] = CASES[name](ctx, size)
            results[name]["case_seconds"] = round(time.perf_counter() - start, 1)
            print(json.dumps(results[name], indent=1), flush=True)
        return results
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


def _subset(folder: Path, dest: Path, n: int) -> Path:
    for split in ("train", "val"):
        for class_dir in sorted((folder / split).iterdir()):
            files = sorted(class_dir.iterdir())
            take = files[: max(2, n // 4)] if split == "train" else files[:2]
            (dest / split / class_dir.name).mkdir(parents=True, exist_ok=True)
            for f in take:
                shutil.copy(f, dest / split / class_dir.name / f.name)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="tiny sizes (CI smoke test)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="update only the given cases in the existing JSON (and RESULTS.md)",
    )
    args = parser.parse_args(argv)
    size = TOY if args.toy else Size()
    json_path = args.json or (HERE / ("results-toy.json" if args.toy else "results.json"))
    results = run([c for c in args.cases.split(",") if c], size)
    if args.merge and json_path.exists():
        merged = json.loads(json_path.read_text())
        merged.update({k: v for k, v in results.items() if k in CASES})
        merged.setdefault("merged", []).append(
            {"cases": args.cases, "environment": results["environment"]}
        )
        results = merged
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2, default=str))
    if not args.toy and not args.no_write:
        from benchmarks.results_md import write_cpu_section

        write_cpu_section(results, HERE / "RESULTS.md")
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
