"""The one loop: events, the one rule for "best", early stopping that waits for the
learning rate to come down, callback state across resume, extraction as a pass, and a
from-scratch checkpoint whose evaluation equals its validation (precise BatchNorm)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.data.cache import decoded_split
from finetune_core.models.checkpoint import load_checkpoint
from finetune_core.models.loaded import load_run_model
from finetune_core.runs import RunFolder, RunPaths, save_config
from finetune_core.store import Workspace
from finetune_core.training import setup
from finetune_core.training.callbacks import Best, BestMetric
from finetune_core.training.events import Callback
from finetune_core.training.schedules import LRSchedule, lr_factor
from finetune_core.training.trainer import Trainer


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Any]:
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    return ws, create_demo_dataset(ws, per_class=40, size=48)


def config(dataset_id: str, **changes: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        dataset=dataset_id, model="resnet18", weights="none", strategy="full", epochs=3,
        image_size=32, batch_size=16, lr=2e-3, early_stopping=False, channels_last=False,
        mixed_precision="off",
    )  # fmt: skip
    return RunConfig(**{**base, **changes})


class Recorder(Callback):
    """Every event the loop emits, with the phase and epoch at that moment."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def __getattribute__(self, name: str) -> Any:
        if name.startswith(("before_", "after_")):
            return lambda trainer: self.seen.append(
                (name, trainer.phase.name if trainer.phase else "", trainer.epoch)
            )
        return super().__getattribute__(name)


# ---------------------------------------------------------------------- the rules, no training
def test_best_is_the_higher_accuracy_then_the_lower_loss() -> None:
    best = Best()
    rule = BestMetric(best, "val_accuracy")
    rows = [
        {"val_accuracy": 0.5, "val_loss": 1.0, "train_loss": 1.0},
        {"val_accuracy": 0.5, "val_loss": 0.9, "train_loss": 1.0},  # tie: lower loss wins
        {"val_accuracy": 0.4, "val_loss": 0.1, "train_loss": 1.0},  # lower accuracy loses
        {"val_accuracy": 0.6, "val_loss": 5.0, "train_loss": 1.0},  # higher accuracy wins
    ]
    verdicts = []
    for epoch, row in enumerate(rows, 1):
        verdicts.append(rule.is_better(row))
        if verdicts[-1]:
            best.epoch, best.val_accuracy, best.val_loss = (
                epoch,
                row["val_accuracy"],
                row["val_loss"],
            )
    assert verdicts == [True, True, False, True] and best.epoch == 4
    by_loss = BestMetric(Best(epoch=1, val_accuracy=0.9, val_loss=1.0), "val_loss", min_delta=0.1)
    assert not by_loss.is_better({"val_accuracy": 0.1, "val_loss": 0.95, "train_loss": 1})
    assert by_loss.is_better({"val_accuracy": 0.1, "val_loss": 0.85, "train_loss": 1})
    no_val = BestMetric(Best(epoch=1, val_loss=0.5))  # no validation split: the training loss
    assert no_val.is_better({"val_accuracy": None, "val_loss": None, "train_loss": 0.4})


@pytest.mark.parametrize("kind", ["onecycle", "cosine", "constant"])
def test_early_stopping_is_armed_once_the_rate_is_down_to_half_its_peak(kind: str) -> None:
    cfg = RunConfig(schedule=kind, warmup_pct=0.25, epochs=12)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = LRSchedule(cfg, opt, first_epoch=1, epochs=12)
    armed = [e for e in range(1, 13) if schedule.annealing(e)]
    if kind == "constant":
        assert armed == list(range(4, 13))  # right after the warm-up
    else:
        first = armed[0]
        assert armed == list(range(first, 13)) and first > 3  # never during warm-up or the peak
        assert lr_factor(kind, first / 12, 0.25) <= 0.5 < lr_factor(kind, (first - 1) / 12, 0.25)


# ---------------------------------------------------------------------- the loop, training
@pytest.mark.slow
def test_a_from_scratch_run_is_not_stopped_while_its_rate_is_high(demo, tmp_path: Path) -> None:
    """Patience 1 on the validation loss, which a from-scratch net worsens at its peak rate:
    no epoch before the rate has halved may count against the patience."""
    ws, ds = demo
    cfg = config(ds.id, epochs=8, early_stopping=True, es_patience=1, best_metric="val_loss")
    result = Trainer(cfg, ds, tmp_path, ws.cache_dir).fit()
    schedule_armed = [
        e
        for e in range(1, 9)
        if lr_factor("onecycle", e / 8, cfg.warmup_pct) <= 0.5 and e / 8 > 0.25
    ]
    for row in result.history:
        if row["epoch"] < schedule_armed[0]:
            assert row["patience_left"] == 1, row  # not counted
    if result.epochs_run < 8:
        assert (
            result.stop_reason.startswith("early stopping")
            and result.epochs_run >= schedule_armed[0]
        )
    assert result.status == "SUCCEEDED"


@pytest.mark.slow
def test_extraction_is_a_pass_and_the_probe_trains_epochs(demo, tmp_path: Path) -> None:
    ws, ds = demo
    recorder = Recorder()
    cfg = config(ds.id, strategy="probe", epochs=2, lr=3e-2, augmentation="none")
    Trainer(cfg, ds, tmp_path / "a", ws.cache_dir, callbacks=[recorder]).fit()
    passes = [phase for name, phase, _ in recorder.seen if name == "before_pass"]
    epochs = [epoch for name, _, epoch in recorder.seen if name == "before_epoch"]
    assert passes == ["extracting train features", "extracting val features"]
    assert epochs == [1, 2]  # no epoch events while extracting
    assert not [s for s in recorder.seen if s[0] == "after_epoch" and s[1].startswith("extracting")]
    assert recorder.seen[0][0] == "before_fit" and recorder.seen[-1][0] == "after_fit"


@pytest.mark.slow
def test_callback_state_goes_into_checkpoints_and_comes_back_on_resume(
    demo, tmp_path: Path
) -> None:
    ws, ds = demo
    stop = threading.Event()

    class StopInEpoch3(Callback):
        def after_batch(self, trainer: Any) -> None:
            if trainer.epoch == 3:
                stop.set()

    cfg = config(ds.id, epochs=5, early_stopping=True, es_patience=4, schedule="constant")
    first = Trainer(
        cfg, ds, tmp_path, ws.cache_dir, callbacks=[StopInEpoch3()], stop_event=stop
    ).fit()
    assert first.status == "STOPPED" and first.epochs_run == 2
    saved = load_checkpoint(RunPaths(tmp_path).checkpoint("last"))["callbacks"]
    assert saved["best"]["epoch"] == first.best_epoch
    assert saved["early_stopping"]["bad_epochs"] == 4 - first.history[-1]["patience_left"]
    resumed = Trainer(cfg, ds, tmp_path, ws.cache_dir, resume=True)
    second = resumed.fit()
    assert [r["epoch"] for r in second.history] == [1, 2, 3, 4, 5]
    assert second.best_val_accuracy >= first.best_val_accuracy  # the best survived the restart


@pytest.mark.slow
def test_a_from_scratch_checkpoint_evaluates_to_its_validation_accuracy(
    demo, tmp_path: Path
) -> None:
    """One accuracy per checkpoint, for a network whose BatchNorm statistics are trained."""
    ws, ds = demo
    cfg = config(ds.id, epochs=3)
    result = Trainer(cfg, ds, tmp_path, ws.cache_dir).fit()
    save_config(RunPaths(tmp_path), cfg)  # what the job manager and the CLI write
    loaded = load_run_model(RunFolder(tmp_path), "best")
    val = decoded_split(ds, "val", 32, ws.cache_dir)
    accuracy = float((loaded.predict_uint8(val.images).argmax(1) == val.labels.numpy()).mean())
    assert accuracy == pytest.approx(result.best_val_accuracy, abs=1e-6)


def test_decoding_reports_its_progress_as_a_setup_step(demo, tmp_path: Path) -> None:
    """Before the loop, decoding the images is progress of its own (not a fake epoch 0)."""
    ws, ds = demo
    seen: list[tuple[str, int, int]] = []

    class Setup(Callback):
        def on_setup(self, trainer: Any, what: str, done: int, total: int) -> None:
            seen.append((what, done, total))

    trainer = Trainer(config(ds.id), ds, tmp_path, tmp_path / "fresh-cache", callbacks=[Setup()])
    setup.build_model(trainer)
    setup.load_data(trainer)
    decoding = {what: (done, total) for what, done, total in seen}
    assert decoding["decoding train images"] == (len(trainer.train_data),) * 2
    assert decoding["decoding validation images"] == (len(trainer.val_data),) * 2
    assert trainer.epoch == 0 and trainer.history == []
