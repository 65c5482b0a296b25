"""GPU benchmark for one NVIDIA GPU: the plain fp32 loop vs our trainer, side by side.

    python benchmarks/gpu_bench.py [--images 2048] [--json out.json]

Generates a folder of JPEGs, then for resnet50 and efficientnet_b0 at 224 px
(full fine-tune, same batch size, same data) measures training images/s of
(1) the article's plain loop (ImageFolder + DataLoader + Resize/ToTensor/Normalize,
fp32, SGD), with 0 and with 8 DataLoader workers, and (2) our Trainer (bf16
autocast, channels_last, uint8 cache on the GPU, on-GPU augmentation). It also
measures the fraction of our step time spent producing batches, and forward-only
feature extraction (the probe's cache build). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.seed_loop import seed_loop  # noqa: E402
from finetune_core.config import RunConfig  # noqa: E402
from finetune_core.data import ingest, make_demo_folder  # noqa: E402
from finetune_core.data.augment import augment_normalized  # noqa: E402
from finetune_core.store import Workspace  # noqa: E402
from finetune_core.training.events import Callback  # noqa: E402
from finetune_core.training.trainer import Trainer  # noqa: E402

DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class Clock(Callback):
    """Timestamps of batch ends after a warm-up epoch (synchronised), then stops."""

    def __init__(self, stop: threading.Event, warm_epochs: int, batches: int) -> None:
        self.stop, self.warm, self.batches = stop, warm_epochs, batches
        self.marks: list[float] = []

    def after_batch(self, trainer):
        if trainer.phase.trains and trainer.epoch > self.warm:
            sync()
            self.marks.append(time.perf_counter())
            if len(self.marks) > self.batches:
                self.stop.set()


def ours(ws, ds, arch: str, batch: int, batches: int) -> dict:
    stop = threading.Event()
    clock = Clock(stop, warm_epochs=1, batches=batches)
    cfg = RunConfig(
        dataset=ds.id,
        model=arch,
        weights="none",
        strategy="full",
        epochs=20,
        image_size=224,
        batch_size=batch,
        lr=1e-3,
        optimizer="sgd",
        augmentation="light",
        mixed_precision="bf16",
        channels_last=True,
        early_stopping=False,
        device=DEVICE,
    )
    run_dir = Path(tempfile.mkdtemp())
    trainer = Trainer(cfg, ds, run_dir, ws.cache_dir, callbacks=[clock], stop_event=stop)
    trainer.fit()
    m = clock.marks
    ips = batch * (len(m) - 1) / (m[-1] - m[0])
    # time the data path alone (index + augment + normalise + layout) for the same batches
    images = trainer.train_data.images
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images)).to(images.device)
    sync()
    t = time.perf_counter()
    for i in range(batches):
        idx = order[(i * batch) % (len(images) - batch) :][:batch]
        xb = augment_normalized(images[idx], "light", trainer.mean, trainer.std, gen)
        xb = xb.contiguous(memory_format=torch.channels_last)
    sync()
    data_s = (time.perf_counter() - t) / batches
    step_s = batch / ips
    # forward-only feature extraction at the probe's settings
    model = trainer.model.eval()
    x = images[:batch]
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        for _ in range(3):
            model.features(
                augment_normalized(x, "none", trainer.mean, trainer.std).contiguous(
                    memory_format=torch.channels_last
                )
            )
        sync()
        t = time.perf_counter()
        reps = 10
        for _ in range(reps):
            model.features(
                augment_normalized(x, "none", trainer.mean, trainer.std).contiguous(
                    memory_format=torch.channels_last
                )
            )
        sync()
    feat_ips = reps * batch / (time.perf_counter() - t)
    return {
        "images_per_second": round(ips, 1),
        "data_fraction": round(data_s / step_s, 4),
        "feature_images_per_second": round(feat_ips, 1),
        "cache_on_gpu": images.is_cuda,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if DEVICE == "cuda"
        else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--archs", default="resnet50,efficientnet_b0")
    parser.add_argument("--device", default="cuda", help="cpu only for a dry run of the script")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (use --device cpu for a dry run)")
    tmp = Path(tempfile.mkdtemp(prefix="gpubench-"))
    t = time.perf_counter()
    per_class = args.images // 4
    folder = make_demo_folder(tmp / "data", classes=4, per_class=per_class, size=256)
    print(f"generated {args.images} JPEGs in {time.perf_counter() - t:.1f}s", flush=True)
    ws = Workspace(tmp / "ws")
    t = time.perf_counter()
    ds = ingest(ws, folder, name="gpu-bench").dataset
    print(f"ingested in {time.perf_counter() - t:.1f}s", flush=True)
    # ImageFolder wants the class folders directly: the demo folder already is one
    results = {
        "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "images": args.images,
        "batch": args.batch,
        "rows": [],
    }
    for arch in args.archs.split(","):
        row: dict = {"arch": arch}
        for workers in (0, 8):
            res = seed_loop(
                folder,
                None,
                arch=arch,
                epochs=1,
                batch_size=args.batch,
                image_size=224,
                device=DEVICE,
                num_workers=workers,
                max_batches=args.batches,
            )
            row[f"seed_w{workers}"] = round(res.images_per_second, 1)
            print(arch, f"seed loop workers={workers}", row[f"seed_w{workers}"], flush=True)
        row.update(ours(ws, ds, arch, args.batch, args.batches))
        row["speedup_vs_seed_w0"] = round(row["images_per_second"] / row["seed_w0"], 2)
        row["speedup_vs_seed_w8"] = round(row["images_per_second"] / row["seed_w8"], 2)
        print(json.dumps(row), flush=True)
        results["rows"].append(row)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    lines = [
        f"GPU: {results['gpu']}, torch {results['torch']}, {results['date']}; {args.images} "
        f"JPEGs (256 px) at 224 px, batch {args.batch}, full fine-tune, SGD.",
        "",
        "| model | plain loop fp32, 0 workers (img/s) | plain loop fp32, 8 workers | ours bf16 + channels_last + GPU cache (img/s) | speedup vs 0 / 8 workers | data wait | probe feature extraction (img/s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['arch']} | {r['seed_w0']} | {r['seed_w8']} | **{r['images_per_second']}** | "
            f"{r['speedup_vs_seed_w0']}x / {r['speedup_vs_seed_w8']}x | {100 * r['data_fraction']:.1f}% | "
            f"{r['feature_images_per_second']} |"
        )
    table = "\n".join(lines)
    results["markdown"] = table
    print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
