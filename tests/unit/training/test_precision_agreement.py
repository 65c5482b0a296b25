"""One accuracy per checkpoint: a run trained in bf16 reports, in metrics.json, exactly the
figures the evaluation of its best checkpoint computes (validation runs in the
inference precision, fp32), and the run records both precisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_core import device as devices
from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.evaluation.evaluate import evaluate_run
from finetune_core.runs import RunFolder, RunPaths, read_history, read_summary, save_config
from finetune_core.store import Workspace
from finetune_core.training.trainer import Trainer

pytestmark = pytest.mark.slow  # every test here trains a model


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Any]:
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    return ws, create_demo_dataset(ws, per_class=10, size=40)


@pytest.mark.parametrize(
    ("strategy", "changes"),
    [
        ("full", {"epochs": 2, "lr": 2e-3}),  # from scratch: precise BN, channels_last, bf16
        ("probe", {"epochs": 4, "lr": 3e-2}),  # features extracted, head on cached features
    ],
)
def test_bf16_run_reports_the_evaluations_accuracy_and_loss(
    demo: tuple[Workspace, Any], tmp_path: Path, strategy: str, changes: dict[str, Any]
) -> None:
    ws, ds = demo
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = RunConfig(
        dataset=ds.id,
        model="resnet18",
        weights="none",
        strategy=strategy,
        image_size=32,
        batch_size=16,
        augmentation="light",
        early_stopping=False,
        channels_last=True,
        mixed_precision="bf16",  # autocast bf16 runs on any CPU (emulated where not native)
        **changes,
    )
    paths = RunPaths(run_dir)
    save_config(paths, cfg)
    trainer = Trainer(cfg, ds, run_dir, ws.cache_dir)
    result = trainer.fit()
    assert trainer.amp_dtype == torch.bfloat16  # the steps really trained in bf16

    summary = read_summary(paths)
    assert summary["train_precision"] == "bf16"
    assert summary["inference_precision"] == devices.INFERENCE_PRECISION == "fp32"

    evaluation = evaluate_run(RunFolder(run_dir), workspace=ws, cache_dir=ws.cache_dir)
    val = evaluation["splits"]["val"]
    assert evaluation["inference_precision"] == "fp32"
    assert evaluation["checkpoint_epoch"] == result.best_epoch == summary["best_epoch"]
    assert summary["val_accuracy"] == val["accuracy"]  # the same number, not a near one
    assert abs(summary["val_loss"] - val["log_loss"]) <= 1e-9
    best_row = next(r for r in read_history(paths) if r["epoch"] == summary["best_epoch"])
    assert best_row["val_accuracy"] == val["accuracy"]  # the chart's best epoch too
