"""The trainer on the generated demo dataset with real torchvision models, on CPU."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from finetune_core.models.loaded import load_run_model
from finetune_core.runs import RunPaths, read_history
from finetune_core.store import Workspace
from finetune_core.training.events import Callback
from finetune_core.training.trainer import Trainer, TrainingDiverged

pytestmark = pytest.mark.slow  # every test here trains a model (or uses one trained here)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Any]:
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    return ws, create_demo_dataset(ws, per_class=40, size=48)


def tiny_config(dataset_id: str, **changes: Any) -> RunConfig:
    base = dict(
        dataset=dataset_id,
        model="resnet18",
        weights="none",
        strategy="full",
        epochs=3,
        image_size=32,
        batch_size=16,
        lr=2e-3,
        augmentation="light",
        early_stopping=False,
        channels_last=False,
        mixed_precision="off",
    )
    base.update(changes)
    return RunConfig(**base)


def train(demo, tmp_path: Path, callbacks=(), resume=False, stop=None, **changes) -> tuple:
    ws, ds = demo
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(ds.id, **changes)
    trainer = Trainer(
        cfg,
        ds,
        run_dir,
        ws.cache_dir,
        callbacks=list(callbacks),
        stop_event=stop,
        resume=resume,
    )
    return trainer, trainer.fit(), run_dir


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "changes"),
    [
        ("probe", {"epochs": 30, "lr": 3e-2, "batch_size": 32}),
        ("finetune", {"epochs": 6, "freeze_epochs": 1, "lr": 1e-2, "lr_mult": 10}),
        ("full", {"epochs": 6}),
        ("last_n", {"epochs": 6, "last_n_groups": 2}),
    ],
)
def test_every_strategy_learns_far_above_chance(demo, tmp_path, strategy, changes) -> None:
    _, result, run_dir = train(demo, tmp_path, strategy=strategy, **changes)
    chance = 1 / len(demo[1].class_names)
    assert result.status == "SUCCEEDED"
    assert result.best_val_accuracy >= chance + 0.3, result.history
    history = read_history(RunPaths(run_dir))
    assert [row["epoch"] for row in history] == list(range(1, changes["epochs"] + 1))
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert ckpt["epoch"] == result.best_epoch
    assert ckpt["class_names"] == demo[1].class_names
    summary = (run_dir / "metrics.json").read_text()
    assert '"best_epoch"' in summary and '"train_seconds"' in summary


def test_finetune_phases_freeze_then_unfreeze_with_discriminative_rates(demo, tmp_path) -> None:
    seen: list[tuple[str, int, list[float]]] = []

    class Spy(Callback):
        def after_epoch(self, trainer):
            trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
            seen.append((trainer.metrics["phase"], trainable, []))

    trainer, result, _ = train(
        demo, tmp_path, callbacks=[Spy()], strategy="finetune", epochs=2, freeze_epochs=1
    )
    head = sum(p.numel() for p in trainer.model.head.parameters())
    total = sum(p.numel() for p in trainer.model.parameters())
    assert seen[0][0] == "frozen" and seen[0][1] == head
    assert seen[1][0] == "unfrozen" and seen[1][1] == total
    phases = trainer.plan
    lrs = phases[1].lrs
    assert lrs == sorted(lrs) and lrs[-1] == pytest.approx(trainer.cfg.lr / 2)
    assert lrs[0] == pytest.approx(trainer.cfg.lr / 2 / trainer.cfg.lr_mult)


def test_stop_takes_effect_within_one_batch_and_keeps_a_model(demo, tmp_path) -> None:
    stop = threading.Event()
    steps_after_stop: list[int] = []

    class StopAtSecondBatch(Callback):
        def after_batch(self, trainer):
            if stop.is_set():
                steps_after_stop.append(trainer.step)
            elif trainer.epoch == 2 and trainer.step == 0:
                stop.set()

    _, result, run_dir = train(demo, tmp_path, callbacks=[StopAtSecondBatch()], stop=stop, epochs=3)
    assert result.status == "STOPPED"
    assert steps_after_stop == []  # no batch ran after the one that saw the request
    assert result.epochs_run == 1
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["epoch"] == 1


def test_resume_continues_the_epoch_count(demo, tmp_path) -> None:
    stop = threading.Event()

    class StopInEpoch3(Callback):
        def after_batch(self, trainer):
            if trainer.epoch == 3:
                stop.set()

    _, first, run_dir = train(
        demo, tmp_path, callbacks=[StopInEpoch3()], stop=stop, epochs=4, schedule="cosine"
    )
    assert first.status == "STOPPED" and first.epochs_run == 2
    _, second, _ = train(demo, tmp_path, resume=True, epochs=4, schedule="cosine")
    assert second.status == "SUCCEEDED"
    assert [row["epoch"] for row in second.history] == [1, 2, 3, 4]
    lines = read_history(RunPaths(run_dir))
    assert [row["epoch"] for row in lines] == [1, 2, 3, 4]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 4


def test_same_seed_gives_same_metrics(demo, tmp_path) -> None:
    _, a, _ = train(demo, tmp_path / "a", epochs=2, seed=7)
    _, b, _ = train(demo, tmp_path / "b", epochs=2, seed=7)
    _, c, _ = train(demo, tmp_path / "c", epochs=2, seed=8)
    keys = ("train_loss", "val_loss", "val_accuracy")
    assert [[r[k] for k in keys] for r in a.history] == [[r[k] for k in keys] for r in b.history]
    assert [r["train_loss"] for r in a.history] != [r["train_loss"] for r in c.history]


def test_huge_learning_rate_fails_with_a_nan_reason(demo, tmp_path) -> None:
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf).*Lower the learning rate"):
        train(
            demo,
            tmp_path,
            optimizer="sgd",
            lr=10.0,  # the largest lr a config accepts
            momentum=0.999,
            schedule="constant",
            warmup_pct=0.0,
            epochs=4,
        )


def test_injected_out_of_memory_halves_the_batch_and_recovers(demo, tmp_path, monkeypatch) -> None:
    from finetune_core.models import classifier as models

    original = models.Classifier.forward
    calls = {"oom": 0}

    def forward(self, x):
        if self.training and x.shape[0] > 8:  # training steps hold activations for backward
            calls["oom"] += 1
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (injected)"
            )
        return original(self, x)

    monkeypatch.setattr(models.Classifier, "forward", forward)
    _, result, _ = train(demo, tmp_path, epochs=2, batch_size=32)
    assert result.status == "SUCCEEDED"
    assert result.batch_size == 8
    assert calls["oom"] == 2  # 32 -> 16 -> 8
    assert any("out of memory at batch size 32" in e for e in result.events)
    assert all(row["batch_size"] == 8 for row in result.history)


def test_checkpoint_interrupted_mid_write_leaves_the_previous_one(
    demo, tmp_path, monkeypatch
) -> None:
    _, result, run_dir = train(demo, tmp_path, epochs=2)
    last = run_dir / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device (injected)")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(last, {"model_state": {}, "epoch": 99})
    monkeypatch.undo()
    assert last.read_bytes() == before
    assert load_checkpoint(last)["epoch"] == 2
    assert [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")] == []
    last.write_bytes(before[: len(before) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(last)


def test_custom_pt2_backbone_trains_as_a_probe(demo, tmp_path) -> None:
    class Backbone(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv(x)).mean(dim=(2, 3))

    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(
        Backbone().eval(), (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},)
    )
    path = tmp_path / "backbone.pt2"
    torch.export.save(program, path)
    _, result, run_dir = train(
        demo,
        tmp_path,
        model="custom",
        weights=str(path),
        strategy="probe",
        epochs=40,
        lr=5e-2,
        batch_size=32,
    )
    assert result.status == "SUCCEEDED"
    assert result.best_val_accuracy > 1 / 3 + 0.2
    assert (run_dir / "backbone.pt2").read_bytes() == path.read_bytes()


def test_probe_checkpoint_reproduces_the_validation_accuracy(demo, tmp_path) -> None:
    """The probe trains on standardised features; the saved head has the scaling folded in."""
    from finetune_core.data.cache import decoded_split
    from finetune_core.runs import RunFolder

    ws, ds = demo
    _, result, run_dir = train(
        demo, tmp_path, strategy="probe", epochs=8, lr=3e-2, batch_size=32, augmentation="none"
    )
    (run_dir / "config.json").write_text(tiny_config(ds.id, strategy="probe").to_json())
    loaded = load_run_model(RunFolder(run_dir), "best")
    val = decoded_split(ds, "val", 32, ws.cache_dir)
    probs = loaded.predict_uint8(val.images)
    accuracy = float((probs.argmax(1) == val.labels.numpy()).mean())
    assert accuracy == pytest.approx(result.best_val_accuracy, abs=1e-6)
    assert result.best_val_accuracy > 1 / 3 + 0.2


def test_probe_resume_continues_from_the_folded_head(demo, tmp_path) -> None:
    stop = threading.Event()

    class StopInEpoch4(Callback):
        def after_batch(self, trainer):
            if trainer.epoch == 4:
                stop.set()

    common = dict(strategy="probe", epochs=6, lr=3e-2, batch_size=32, augmentation="none")
    _, first, _ = train(demo, tmp_path, callbacks=[StopInEpoch4()], stop=stop, **common)
    assert first.status == "STOPPED" and first.epochs_run == 3
    _, second, _ = train(demo, tmp_path, resume=True, **common)
    assert [r["epoch"] for r in second.history] == list(range(1, 7))
    # training went on from where it was, not from scratch: the loss keeps falling
    assert second.history[3]["train_loss"] <= first.history[2]["train_loss"] * 1.05


def test_lr_finder_suggests_a_rate_only_when_the_loss_falls() -> None:
    from finetune_core.training.lr_finder import suggest_lr

    lrs = [1e-6 * 10 ** (i / 10) for i in range(60)]
    falling = [2.0 - 1.5 / (1 + __import__("math").exp(-(i - 30) / 4)) for i in range(50)] + [
        3.0 + i for i in range(10)
    ]
    suggested = suggest_lr(lrs, falling)
    assert suggested is not None and lrs[20] <= suggested <= lrs[40]
    assert suggest_lr(lrs, [1.1] * 60) is None  # flat: nothing to recommend
    assert suggest_lr(lrs[:3], [1.0, 0.9, 0.8]) is None


def test_lr_finder_sweeps_the_real_model(demo, tmp_path) -> None:
    from finetune_core.training.lr_finder import find_lr

    ws, ds = demo
    seen: list[int] = []
    result = find_lr(
        tiny_config(ds.id, strategy="finetune"),
        ds,
        ws.cache_dir,
        num_steps=30,
        progress=lambda done, total: seen.append(done),
    )
    assert 5 <= len(result.lrs) <= 30 and len(result.lrs) == len(result.losses)
    assert result.lrs == sorted(result.lrs) and result.lrs[0] == pytest.approx(1e-7)
    assert seen[: len(result.lrs)] == list(range(1, len(result.lrs) + 1))
    assert result.suggested is None or result.lrs[0] <= result.suggested <= result.lrs[-1]
    assert not (ws.cache_dir / "lr_finder" / "checkpoints").exists()  # the sweep saves nothing
