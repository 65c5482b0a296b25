"""Exports of a really trained run: each one predicts what the trained model predicts,
its predict.py works without finetune_core, and failures are reported, never hidden."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision

from finetune_core.config import RunConfig
from finetune_core.data import open_rgb
from finetune_core.data.augment import normalize
from finetune_core.data.cache import to_uint8_chw
from finetune_core.export import (
    FORMATS,
    ONNX_HINT,
    TOLERANCE,
    ExportError,
    export_run,
    read_export_checks,
    torchvision_state_dict,
    writers,
)
from finetune_core.jobs.manager import JobManager
from finetune_core.models.backbone import ZOO, family_of
from finetune_core.models.classifier import build_classifier
from finetune_core.models.loaded import load_run_model
from finetune_core.runs import RunError, RunFolder
from finetune_core.store import RunRecord, RunStatus, new_id


def val_batch(trained: dict[str, Any]) -> tuple[list[Path], torch.Tensor]:
    """The run's val and test images, preprocessed exactly as in training."""
    ds, loaded = trained["dataset"], trained["loaded"]
    paths = [ds.image_path(r) for r in ds.rows("val") + ds.rows("test")]
    u8 = torch.from_numpy(np.stack([to_uint8_chw(open_rgb(p), loaded.image_size) for p in paths]))
    mean, std = torch.tensor(loaded.mean), torch.tensor(loaded.std)
    return paths, normalize(u8, mean, std)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def load_artifact(folder: Path, fmt: str) -> Any:
    """The exported model loaded with the plain runtime APIs (not predict.py)."""
    meta = json.loads((folder / "model.json").read_text())
    if fmt == "pt2":
        module = torch.export.load(str(folder / "model.pt2")).module()
        return lambda x: module(torch.from_numpy(x)).detach().numpy()
    if fmt == "torchscript":
        module = torch.jit.load(str(folder / "model.torchscript.pt"))
        return lambda x: module(torch.from_numpy(x)).detach().numpy()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            str(folder / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        return lambda x: session.run(None, {"input": x})[0]
    import torchvision

    net = torchvision.models.get_model(meta["arch"], weights=None, num_classes=meta["num_classes"])
    net.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    net.eval()
    return lambda x: net(torch.from_numpy(x)).detach().numpy()


def run_predict_py(
    folder: Path, *args: str, cwd: Path, blocked: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Run the generated predict.py with finetune_core (and ``blocked``) unimportable."""
    block = "".join(f"sys.modules[{m!r}] = None; " for m in ("finetune_core", *blocked))
    code = (
        f"import sys, runpy; {block}"
        f"sys.argv = ['predict.py', *{list(args)!r}]; "
        f"runpy.run_path({str(folder / 'predict.py')!r}, run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_predicts_like_the_trained_model(trained, fmt, tmp_path) -> None:
    run, loaded = trained["run"], trained["loaded"]
    result = export_run(run, fmt)

    assert result.verified, result.message
    assert result.max_abs_diff is not None and result.max_abs_diff <= TOLERANCE == 1e-4
    assert result.path == run.path / "export" / f"{fmt}.zip" and result.path.is_file()
    folder = run.path / "export" / fmt
    assert {"labels.json", "preprocessing.json", "predict.py", "verification.json"} <= set(
        result.files
    )
    assert sorted(p.name for p in folder.iterdir()) == result.files
    assert json.loads((folder / "labels.json").read_text()) == loaded.class_names
    pre = json.loads((folder / "preprocessing.json").read_text())
    assert pre["image_size"] == 32 and pre["resize"]["interpolation"] == "bilinear"
    assert pre["mean"] == pytest.approx(loaded.mean) and pre["std"] == pytest.approx(loaded.std)
    assert pre["layout"] == "NCHW" and pre["dtype"] == "float32"
    check = json.loads((folder / "verification.json").read_text())
    assert check["passed"] is True and check["format"] == fmt
    assert check["images"] == 16 and check["preprocessing_max_abs_diff"] == 0.0
    assert check["top1_agree"] == 16
    with zipfile.ZipFile(result.path) as archive:
        names = sorted(n.split("/", 1)[1] for n in archive.namelist())
        assert names == result.files
        assert all(n.startswith(f"{run.id}-{fmt}/") for n in archive.namelist())
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]

    # Our own comparison, with the plain runtime APIs, on the run's val and test images.
    paths, x = val_batch(trained)
    with torch.no_grad():
        expected = torch.softmax(loaded.model(x), dim=1).numpy()
    got = softmax(np.asarray(load_artifact(folder, fmt)(x.numpy()), dtype=np.float64))
    assert np.abs(got - expected).max() <= TOLERANCE
    assert (got.argmax(1) == expected.argmax(1)).all()

    # The generated predict.py, run on a folder of images, agrees with the trained model.
    images = tmp_path / "images"
    images.mkdir()
    for i, path in enumerate(paths):
        shutil.copy(path, images / f"{i:02d}{path.suffix}")
    blocked = {"onnx": ("torch", "torchvision"), "checkpoint": ()}.get(fmt, ("torchvision",))
    proc = run_predict_py(folder, str(images), cwd=tmp_path, blocked=blocked)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("\t") for line in proc.stdout.strip().splitlines()]
    copies = sorted(images.iterdir())
    predicted = loaded.predict_images([open_rgb(p) for p in copies]).argmax(1)
    assert [Path(row[0]).name for row in lines] == [p.name for p in copies]
    assert [row[1] for row in lines] == [loaded.class_names[i] for i in predicted]
    assert all(0 < float(row[2]) <= 1 for row in lines)


@pytest.mark.slow
def test_predict_py_json_top_k_and_bad_files(trained, tmp_path) -> None:
    run, loaded, ds = trained["run"], trained["loaded"], trained["dataset"]
    result = export_run(run, "checkpoint")
    good = ds.image_path(ds.rows("val")[0])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good.read_bytes()[:200])
    proc = run_predict_py(
        result.folder, str(good), str(broken), "--json", "--top-k", "3", cwd=tmp_path
    )
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    [prediction] = out["predictions"]
    probs = loaded.predict_images([open_rgb(good)])[0]
    order = np.argsort(-probs)
    assert [t["label"] for t in prediction["top_k"]] == [loaded.class_names[i] for i in order]
    assert prediction["prob"] == pytest.approx(float(probs[order[0]]), abs=1e-5)
    assert [e["path"] for e in out["errors"]] == [str(broken)]
    assert "broken.jpg\terror: cannot read image" in proc.stderr


@pytest.mark.slow
def test_custom_backbone_run_exports_with_its_backbone(trained, tmp_path) -> None:
    class Backbone(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
            self.bn = torch.nn.BatchNorm2d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))

    torch.manual_seed(0)
    program = torch.export.export(
        Backbone().eval(),
        (torch.randn(2, 3, 32, 32),),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
    )
    torch.export.save(program, str(tmp_path / "bb.pt2"))
    ws = trained["ws"]
    manager = JobManager(ws)
    try:
        run_id = manager.submit(
            RunConfig(
                dataset=trained["dataset"].id,
                model="custom",
                weights=str(tmp_path / "bb.pt2"),
                strategy="probe",
                epochs=3,
                image_size=32,
                batch_size=16,
                lr=5e-2,
                channels_last=False,
                mixed_precision="off",
            )
        )
        assert manager.wait(run_id, timeout=300) == RunStatus.SUCCEEDED
    finally:
        manager.shutdown()
    run = RunFolder(ws.run_dir(run_id))
    result = export_run(run, "checkpoint")
    assert result.verified, result.message
    assert "backbone.pt2" in result.files
    assert (result.folder / "backbone.pt2").read_bytes() == (tmp_path / "bb.pt2").read_bytes()
    pt2 = export_run(run, "pt2")
    assert pt2.verified, pt2.message
    paths, _ = val_batch(trained)
    proc = run_predict_py(result.folder, *map(str, paths), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded = load_run_model(run)
    expected = loaded.predict_images([open_rgb(p) for p in paths]).argmax(1)
    labels = [line.split("\t")[1] for line in proc.stdout.strip().splitlines()]
    assert labels == [loaded.class_names[i] for i in expected]


# ------------------------------------------------------------------ bad input
def copy_run(trained: dict[str, Any], status: str, keep_checkpoint: bool = True) -> RunFolder:
    """A copy of the trained run registered in the workspace with ``status``."""
    ws, src = trained["ws"], trained["run"]
    run_id = new_id("r")
    name = 'copy """ of C:\\New\\run @@SIZE@@'  # must not break predict.py's docstring
    ws.add_run(RunRecord(id=run_id, status=status, name=name, dataset_id=src.config.dataset))
    ignore = shutil.ignore_patterns("export", *(() if keep_checkpoint else ("checkpoints",)))
    shutil.copytree(src.path, ws.run_dir(run_id), ignore=ignore, dirs_exist_ok=True)
    return RunFolder(ws.run_dir(run_id))


@pytest.mark.slow
def test_failed_run_and_run_without_checkpoint_are_refused(trained) -> None:
    failed = copy_run(trained, RunStatus.FAILED)
    with pytest.raises(RunError, match="FAILED"):
        export_run(failed, "pt2")
    empty = copy_run(trained, RunStatus.STOPPED, keep_checkpoint=False)
    with pytest.raises(RunError, match="no saved model"):
        export_run(empty, "checkpoint")
    assert not (failed.path / "export").exists() and not (empty.path / "export").exists()


@pytest.mark.slow
def test_unknown_format_and_missing_onnx_packages(trained, monkeypatch) -> None:
    with pytest.raises(ExportError, match="choose one of checkpoint, pt2, torchscript, onnx"):
        export_run(trained["run"], "tflite")
    real = writers.importable
    monkeypatch.setattr(writers, "importable", lambda m: m != "onnxruntime" and real(m))
    with pytest.raises(ExportError) as info:
        export_run(trained["run"], "onnx")
    assert "onnxruntime" in str(info.value) and ONNX_HINT in str(info.value)


@pytest.mark.slow
def test_exporter_failure_is_a_result_not_a_crash(trained, monkeypatch) -> None:
    run = copy_run(trained, RunStatus.SUCCEEDED)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Tracer cannot infer type of output\n(long internal details)")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    result = export_run(run, "torchscript")
    assert not result.verified and result.path is None and result.max_abs_diff is None
    assert result.message == (
        "The TorchScript export failed (RuntimeError): Tracer cannot infer type of output"
    )
    assert [p.name for p in (run.path / "export").iterdir()] == []


@pytest.mark.slow
def test_a_failed_verification_is_reported_with_numbers(trained, monkeypatch) -> None:
    run = copy_run(trained, RunStatus.SUCCEEDED)
    first = export_run(run, "checkpoint")
    assert first.verified
    real = writers.WRITERS["checkpoint"]

    def corrupted(model, example, tmp, run_folder) -> None:
        real(model, example, tmp, run_folder)
        state = torch.load(tmp / "weights.pt", weights_only=True)
        state["fc.bias"] = state["fc.bias"] + torch.tensor([3.0, 0.0, -3.0])
        torch.save(state, tmp / "weights.pt")

    monkeypatch.setitem(writers.WRITERS, "checkpoint", corrupted)
    result = export_run(run, "checkpoint")
    assert not result.verified and result.path is not None
    assert result.max_abs_diff > TOLERANCE
    assert result.message.startswith("NOT verified") and "tolerance 1e-04" in result.message
    check = json.loads((run.path / "export" / "checkpoint" / "verification.json").read_text())
    assert check["passed"] is False and check["max_abs_diff"] == result.max_abs_diff
    assert read_export_checks(run) == [check]
    # The new export replaced the old one whole: no temp or old folders remain.
    assert sorted(p.name for p in (run.path / "export").iterdir()) == [
        "checkpoint",
        "checkpoint.zip",
    ]


# One small model per family runs by default; the big ones only with the slow tests.
SMALL = {"resnet18", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_800mf"}


@pytest.mark.parametrize(
    "arch", [a if a in SMALL else pytest.param(a, marks=pytest.mark.slow) for a in ZOO]
)
def test_checkpoint_weights_load_into_plain_torchvision(arch) -> None:
    """Every zoo model's renamed state_dict loads strictly into torchvision's own model."""
    size = 32 if family_of(arch).fixed_size else 48
    model, _ = build_classifier(arch, 3, "none", image_size=size, dropout=0.2)
    model.eval()
    kwargs = {"image_size": size} if family_of(arch).fixed_size else {}
    net = torchvision.models.get_model(arch, weights=None, num_classes=3, **kwargs)
    net.load_state_dict(torchvision_state_dict(arch, model.state_dict()))  # strict
    net.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
