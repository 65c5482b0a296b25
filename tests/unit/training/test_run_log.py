"""The run's log is kept (issue 13 item 12): what ``trainer.log`` says (weights loaded,
OOM batch halving, why early stopping ended the run) and the error that ended a run are
written to the run folder's log, and the report shows them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision

from finetune_core import runs
from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.models import classifier as models
from finetune_core.models.weights import WeightsError
from finetune_core.reporting.report import build_report
from finetune_core.runs import RunFolder, RunPaths
from finetune_core.store import Workspace
from finetune_core.training.trainer import Trainer
from tests.robustness.test_faults import _allocate_impossibly

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Any]:
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    return ws, create_demo_dataset(ws, per_class=6, size=32)


def tiny(dataset_id: str, **changes: Any) -> RunConfig:
    base = dict(
        dataset=dataset_id, model="resnet18", weights="none", strategy="full", epochs=2,
        image_size=32, batch_size=16, lr=1e-3, augmentation="none", early_stopping=False,
        channels_last=False, mixed_precision="off",
    )  # fmt: skip
    base.update(changes)
    return RunConfig(**base)


def fit(demo: tuple[Workspace, Any], run_dir: Path, config: RunConfig) -> RunPaths:
    ws, ds = demo
    paths = RunPaths(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.save_config(paths, config)
    Trainer(config, ds, run_dir, ws.cache_dir).fit()
    return paths


def messages(paths: RunPaths) -> list[str]:
    lines = runs.read_log(paths)
    assert all(re.match(STAMP, line) for line in lines), lines
    return [line[20:] for line in lines]


def test_log_lines_are_stamped_one_per_message(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "run")
    assert runs.read_log(paths) == []
    runs.append_log(paths, "first", when=0)
    runs.append_log(paths, "two\nlines\n")
    assert paths.log.name == "run.log"
    assert messages(paths) == ["first", "two | lines"]
    assert runs.read_log(paths, last=1)[0].endswith(" two | lines")


@pytest.mark.slow
def test_early_stopping_says_why_in_the_run_log_and_the_report(demo, tmp_path: Path) -> None:
    # min_delta 1.0: no epoch can beat the first, so patience 1 ends the run after epoch 2
    config = tiny(demo[1].id, epochs=4, early_stopping=True, es_patience=1, es_min_delta=1.0,
                  schedule="constant", warmup_pct=0.0)  # fmt: skip
    paths = fit(demo, tmp_path / "run", config)
    logged = messages(paths)
    assert logged[0] == "Random initialisation."  # the weights report
    assert "early stopping: the best epoch (1) was not beaten for 1 epochs" in logged
    assert logged[-1] == "training ended: SUCCEEDED after 2 epochs, best epoch 1"

    html = build_report(RunFolder(paths.root)).read_text(encoding="utf-8")
    assert "Run log" in html
    for line in runs.read_log(paths):
        assert line in html


@pytest.mark.slow
def test_out_of_memory_batch_halving_is_in_the_run_log(
    demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = models.Classifier.forward

    def forward(self: models.Classifier, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > 4:
            _allocate_impossibly("torch CPU allocator")
        return original(self, x)

    monkeypatch.setattr(models.Classifier, "forward", forward)
    paths = fit(demo, tmp_path / "run", tiny(demo[1].id, epochs=1, batch_size=8))
    assert "out of memory at batch size 8: retrying the epoch at 4" in messages(paths)


@pytest.mark.slow
def test_a_refused_weights_file_is_the_run_logs_last_line(demo, tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(WeightsError):
        fit(demo, tmp_path / "run", tiny(demo[1].id, weights=str(path)))
    last = messages(RunPaths(tmp_path / "run"))[-1]
    assert last.startswith("failed: WeightsError: ") and "looks like weights for resnet34" in last


@pytest.mark.slow
def test_a_log_that_cannot_be_written_hides_no_error(demo, tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    RunPaths(tmp_path / "run").log.mkdir(parents=True)  # run.log is a folder: writes fail
    with pytest.raises(WeightsError, match="looks like weights for resnet34"):
        fit(demo, tmp_path / "run", tiny(demo[1].id, weights=str(path)))
