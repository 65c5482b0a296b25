"""CUDA paths of the trainer; skipped (with the reason printed) where no GPU is visible."""

from __future__ import annotations

import pytest
import torch

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.training.trainer import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible on this machine"),
]


@pytest.mark.parametrize(
    ("strategy", "precision"),
    [("full", "auto"), ("full", "fp16"), ("probe", "bf16"), ("finetune", "off")],
)
def test_trainer_runs_on_cuda(workspace, tmp_path, strategy, precision) -> None:
    ds = create_demo_dataset(workspace, per_class=40, size=64)
    cfg = RunConfig(
        dataset=ds.id,
        model="resnet18",
        weights="none",
        strategy=strategy,
        epochs=4,
        image_size=64,
        batch_size=32,
        lr=1e-2 if strategy == "probe" else 2e-3,
        mixed_precision=precision,
        channels_last=True,
        device="cuda",
        early_stopping=False,
    )
    trainer = Trainer(cfg, ds, tmp_path, workspace.cache_dir)
    result = trainer.fit()
    assert result.status == "SUCCEEDED"
    assert next(trainer.model.parameters()).is_cuda
    assert trainer.train_data.images.is_cuda  # the uint8 cache lives on the GPU
    assert result.best_val_accuracy > 1 / 3
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)


def test_cuda_out_of_memory_is_recovered(workspace, tmp_path, monkeypatch) -> None:
    from finetune_core.models import classifier as models

    original = models.Classifier.forward

    def forward(self, x):
        if self.training and x.shape[0] > 16:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(self, x)

    monkeypatch.setattr(models.Classifier, "forward", forward)
    ds = create_demo_dataset(workspace, per_class=12, size=48)
    cfg = RunConfig(
        dataset=ds.id,
        model="resnet18",
        weights="none",
        strategy="full",
        epochs=1,
        image_size=48,
        batch_size="auto",
        device="cuda",
    )
    result = Trainer(cfg, ds, tmp_path, workspace.cache_dir).fit()
    assert result.status == "SUCCEEDED" and result.batch_size <= 16
