"""init_from: a run starts from another run's checkpoint (backbone and head), checked to
be the same architecture and classes, with its lineage in run.json and its checkpoints,
and without loading the configured ImageNet weights."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_core import runs
from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.models import classifier
from finetune_core.models.checkpoint import (
    CheckpointError,
    init_mismatch,
    load_checkpoint,
    parse_init_from,
    resolve_init_from,
)
from finetune_core.runs import RunPaths
from finetune_core.store import RunRecord, RunStatus, Workspace, new_id
from finetune_core.training.callbacks import TrainingError
from finetune_core.training.events import Callback
from finetune_core.training.trainer import Trainer


def tiny(dataset_id: str, **changes: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        dataset=dataset_id, model="resnet18", weights="none", strategy="full", epochs=2,
        image_size=32, batch_size=8, lr=2e-3, early_stopping=False, channels_last=False,
        mixed_precision="off", freeze_epochs=1,
    )  # fmt: skip
    return RunConfig(**{**base, **changes})


class FirstState(Callback):
    """The model's tensors before the first step; then stops the run after one batch."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.state: dict[str, torch.Tensor] = {}

    def before_fit(self, trainer: Any) -> None:
        self.state = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
        self.stop.set()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Any, str]:
    """A workspace with a 2-epoch run trained from scratch, registered as SUCCEEDED."""
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    ds = create_demo_dataset(ws, per_class=8, size=32)
    run_id = new_id("r")
    config = tiny(ds.id)
    ws.add_run(RunRecord(id=run_id, dataset_id=ds.id, config=config.to_dict(), model="resnet18"))
    result = Trainer(config, ds, ws.run_dir(run_id), ws.cache_dir).fit()
    ws.update_run(run_id, status=result.status, best_epoch=result.best_epoch, epochs_run=2)
    return ws, ds, run_id


@pytest.fixture
def no_imagenet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading ImageNet weights (from the cache or a download) fails the test."""

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("ImageNet weights were loaded despite init_from")

    monkeypatch.setattr(classifier, "imagenet_weights_path", refuse)
    monkeypatch.setattr(classifier, "download_imagenet_weights", refuse)


def warm_start(ws: Workspace, ds: Any, run_dir: Path, config: RunConfig) -> FirstState:
    stop = threading.Event()
    first = FirstState(stop)
    Trainer(config, ds, run_dir, ws.cache_dir, callbacks=[first], stop_event=stop).fit()
    return first


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    different = [k for k in want if not torch.equal(got[k], want[k].cpu())]
    assert different == []


# ---------------------------------------------------------------------- no training
def test_init_from_names_a_run_or_folder_and_a_checkpoint() -> None:
    assert parse_init_from("r-abc") == ("r-abc", "best")
    assert parse_init_from(" r-abc:last ") == ("r-abc", "last")
    assert parse_init_from("/runs/a:best") == ("/runs/a", "best")
    assert parse_init_from("/odd:name") == ("/odd:name", "best")  # not a checkpoint name


def test_unknown_source_says_what_to_give(workspace: Workspace) -> None:
    with pytest.raises(CheckpointError, match="neither a run of this workspace nor a run folder"):
        resolve_init_from("r-nosuchrun", workspace)


def test_mismatch_names_the_architecture_and_the_classes() -> None:
    ckpt = {"arch": "resnet18", "class_names": ["cat", "dog"]}
    assert init_mismatch(ckpt, "resnet18", ["cat", "dog"]) == []
    (arch,) = init_mismatch(ckpt, "mobilenet_v3_small", ["cat", "dog"])
    assert arch == "it is a resnet18 model and this run builds mobilenet_v3_small"
    (order,) = init_mismatch(ckpt, "resnet18", ["dog", "cat"])
    assert "same classes in another order (cat, dog; this dataset: dog, cat)" in order
    (other,) = init_mismatch(ckpt, "resnet18", ["cat", "bird"])
    assert "lacking bird" in other and "with dog that this dataset does not have" in other


# ---------------------------------------------------------------------- training
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["full", "finetune", "last_n", "probe"])
def test_a_warm_started_model_is_the_sources_best_before_its_first_step(
    source: tuple[Workspace, Any, str], tmp_path: Path, strategy: str, no_imagenet: None
) -> None:
    ws, ds, source_id = source
    source_paths = RunPaths(ws.run_dir(source_id))
    best = load_checkpoint(source_paths.checkpoint("best"))
    config = tiny(ds.id, strategy=strategy, weights="imagenet", init_from=source_id)
    first = warm_start(ws, ds, tmp_path / "warm", config)

    assert_same_tensors(first.state, best["model_state"])
    lineage = runs.read_info(RunPaths(tmp_path / "warm"))["lineage"]
    assert lineage == {
        "source_run_id": source_id,
        "source_folder": str(source_paths.root.resolve()),
        "checkpoint": "best",
        "epoch": best["epoch"],
        "val_accuracy": runs.read_summary(source_paths)["val_accuracy"],
    }
    assert load_checkpoint(RunPaths(tmp_path / "warm").checkpoint("last"))["lineage"] == lineage
    log = "\n".join(runs.read_log(RunPaths(tmp_path / "warm")))
    assert f"initialised from run {source_id}: its best checkpoint (epoch {best['epoch']}" in log


@pytest.mark.slow
def test_a_folder_and_its_last_checkpoint_can_be_the_source(
    source: tuple[Workspace, Any, str], tmp_path: Path
) -> None:
    ws, ds, source_id = source
    folder = ws.run_dir(source_id)
    last = load_checkpoint(RunPaths(folder).checkpoint("last"))
    first = warm_start(ws, ds, tmp_path / "warm", tiny(ds.id, init_from=f"{folder}:last"))
    assert_same_tensors(first.state, last["model_state"])
    lineage = runs.read_info(RunPaths(tmp_path / "warm"))["lineage"]
    assert (lineage["source_run_id"], lineage["checkpoint"]) == (source_id, "last")
    assert lineage["epoch"] == 2


@pytest.mark.slow
def test_another_architecture_or_other_classes_are_refused_with_what_differs(
    source: tuple[Workspace, Any, str], tmp_path: Path
) -> None:
    ws, ds, source_id = source
    config = tiny(ds.id, model="mobilenet_v3_small", init_from=source_id)
    with pytest.raises(TrainingError) as arch:
        Trainer(config, ds, tmp_path / "a", ws.cache_dir).fit()
    assert f"Cannot start from run {source_id}: it is a resnet18 model and this run builds " in (
        str(arch.value)
    )
    assert "mobilenet_v3_small" in str(arch.value) and "same model" in str(arch.value)
    two = create_demo_dataset(ws, per_class=4, size=32, classes=2, name="two")
    with pytest.raises(TrainingError) as classes:
        Trainer(tiny(two.id, init_from=source_id), two, tmp_path / "b", ws.cache_dir).fit()
    assert "trained on classes circle, square, triangle" in str(classes.value)
    assert "with triangle that this dataset does not have" in str(classes.value)
    assert not RunPaths(tmp_path / "b").checkpoint("best").exists()


@pytest.mark.slow
def test_a_resumed_warm_start_goes_on_from_its_own_last_checkpoint(
    source: tuple[Workspace, Any, str], tmp_path: Path
) -> None:
    """Resuming loads the run's own last checkpoint, not the source again, and records
    the lineage again when run.json was rewritten meanwhile (the job manager does)."""
    ws, ds, source_id = source
    run_dir = tmp_path / "warm"
    config = tiny(ds.id, init_from=source_id)
    warm_start(ws, ds, run_dir, config)  # stopped after one batch: last.pt saved
    own_last = load_checkpoint(RunPaths(run_dir).checkpoint("last"))
    runs.write_info(RunPaths(run_dir), {"run_id": "warm"})  # lineage gone from run.json
    stop = threading.Event()
    first = FirstState(stop)
    Trainer(
        config, ds, run_dir, ws.cache_dir, callbacks=[first], stop_event=stop, resume=True
    ).fit()
    assert_same_tensors(first.state, own_last["model_state"])
    assert runs.read_info(RunPaths(run_dir))["lineage"]["source_run_id"] == source_id


@pytest.mark.slow
def test_a_run_cannot_start_from_itself(source: tuple[Workspace, Any, str]) -> None:
    ws, ds, source_id = source
    config = tiny(ds.id, init_from=source_id)
    with pytest.raises(TrainingError, match="cannot start from its own checkpoints"):
        Trainer(config, ds, ws.run_dir(source_id), ws.cache_dir).fit()
    assert ws.get_run(source_id).status == RunStatus.SUCCEEDED


@pytest.mark.slow
def test_a_warm_started_probe_scores_what_its_source_scored(
    source: tuple[Workspace, Any, str], tmp_path: Path
) -> None:
    """With a learning rate of ~0 the probe's head stays the source's: its validation
    equals the source's best, so the head's feature scaling is unfolded right and the
    features come from the source's backbone, not from a cache of another backbone (a
    plain probe on the same settings ran first and cached its random backbone's)."""
    ws, ds, source_id = source
    plain = tiny(ds.id, strategy="probe", epochs=1, lr=1e-8, augmentation="none")
    Trainer(plain, ds, tmp_path / "plain", ws.cache_dir).fit()
    warm = plain.replace(init_from=source_id)
    result = Trainer(warm, ds, tmp_path / "warm", ws.cache_dir).fit()
    expected = runs.read_summary(RunPaths(ws.run_dir(source_id)))["val_accuracy"]
    assert result.history[0]["val_accuracy"] == pytest.approx(expected)
    best = load_checkpoint(RunPaths(ws.run_dir(source_id)).checkpoint("best"))
    got = load_checkpoint(RunPaths(tmp_path / "warm").checkpoint("best"))["model_state"]
    head = [k for k in got if k.startswith("head.")]
    assert head and all(torch.allclose(got[k], best["model_state"][k], atol=1e-4) for k in head)
