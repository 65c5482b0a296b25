"""Where early stopping ends a from-scratch run: the v1 rule against the one rule for "best".

    python -m benchmarks.early_stopping [--seeds 0,1,2] [--epochs 20]

Trains resnet18 from scratch (full strategy, one-cycle, the demo shapes) once per seed
without early stopping, then replays both rules, patience 3, on the recorded history:
- v1: validation loss, counted from the first epoch;
- now: the best epoch (accuracy, ties to the lower loss), counted only once the rate
  has come down to half its peak (``LRSchedule.annealing``).
Prints one JSON line per seed: where each rule stops and the best accuracy it keeps.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.store import Workspace
from finetune_core.training.schedules import LRSchedule
from finetune_core.training.trainer import Trainer

PATIENCE = 3


def v1_stop(history: list[dict[str, Any]]) -> int | None:
    best, bad = None, 0
    for row in history:
        if best is None or row["val_loss"] < best:
            best, bad = row["val_loss"], 0
        else:
            bad += 1
            if bad >= PATIENCE:
                return int(row["epoch"])
    return None


def one_rule_stop(history: list[dict[str, Any]], schedule: LRSchedule) -> int | None:
    best: tuple[float, float] | None = None
    bad = 0
    for row in history:
        acc, loss = row["val_accuracy"], row["val_loss"]
        if best is None or acc > best[0] or (acc == best[0] and loss < best[1]):
            best, bad = (acc, loss), 0
        elif schedule.annealing(int(row["epoch"])):
            bad += 1
        if bad >= PATIENCE:
            return int(row["epoch"])
    return None


def best_until(history: list[dict[str, Any]], stop: int | None) -> float:
    return max(r["val_accuracy"] for r in history if stop is None or r["epoch"] <= stop)


def measure(seed: int, epochs: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp())
    ws = Workspace(tmp / "ws")
    ds = create_demo_dataset(ws, per_class=60, size=48)
    cfg = RunConfig(
        dataset=ds.id, model="resnet18", weights="none", strategy="full", epochs=epochs,
        image_size=32, batch_size=16, lr=2e-3, early_stopping=False, seed=seed,
    )  # fmt: skip
    (tmp / "run").mkdir()
    history = Trainer(cfg, ds, tmp / "run", ws.cache_dir).fit().history
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = LRSchedule(cfg, opt, first_epoch=1, epochs=epochs)
    old, new = v1_stop(history), one_rule_stop(history, schedule)
    return {
        "seed": seed,
        "v1_stops_after": old,
        "v1_best_accuracy": round(best_until(history, old), 3),
        "now_stops_after": new,
        "now_best_accuracy": round(best_until(history, new), 3),
        "all_epochs_best_accuracy": round(best_until(history, None), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    for seed in (int(s) for s in args.seeds.split(",")):
        print(json.dumps(measure(seed, args.epochs)), flush=True)


if __name__ == "__main__":
    main()
