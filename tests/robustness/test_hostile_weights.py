"""Hostile weight files: pickles that would run code on load, planted wherever the app
loads a file (run checkpoints, the feature cache, uploaded weights, .pt2 backbones),
truncated checkpoints on resume, and a static check that every load is a safe one.

Every payload is proven live (an unsafe load does run it) so a passing test means the
safe path refused it, not that the payload was broken.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.export.bundle import BundlePaths, template_source
from finetune_core.export.verify import SampleInputs, verify_export
from finetune_core.jobs.manager import JobManager
from finetune_core.models.loaded import load_run_model
from finetune_core.models.safe_pt2 import UnsafeProgramError, check_archive
from finetune_core.models.weights import WeightsError, load_exported_backbone
from finetune_core.runs import RunError, RunFolder
from finetune_core.store import RunStatus, Workspace

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ["finetune_core", "ui", "pages", "views", "benchmarks", "scripts"]


class Payload:
    """Unpickling this calls open(marker, "w"): code that must never run on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def prove_live(load: Any, marker: Path) -> None:
    """An unsafe load of the same bytes does run the payload (then clean up the marker)."""
    with contextlib.suppress(Exception):  # the payload's return value breaks the load
        load()
    assert marker.exists(), "the payload should have run under an unsafe load"
    marker.unlink()


def quick(dataset_id: str, **changes: Any) -> RunConfig:
    base = dict(
        dataset=dataset_id, model="resnet18", weights="none", strategy="probe", epochs=2,
        image_size=32, batch_size=16, lr=1e-2, channels_last=False, mixed_precision="off",
    )  # fmt: skip
    base.update(changes)
    return RunConfig(**base)


@pytest.fixture
def demo_ws(workspace: Workspace) -> tuple[Workspace, Any]:
    return workspace, create_demo_dataset(workspace, per_class=8, size=32)


@pytest.fixture
def manager(demo_ws):
    ws, _ = demo_ws
    manager = JobManager(ws)
    yield manager
    manager.shutdown()


# --------------------------------------------------------------------------- static checks
def _python_files() -> list[Path]:
    files = [ROOT / "app.py"]
    for folder in SOURCE_DIRS:
        files += sorted((ROOT / folder).rglob("*.py")) if (ROOT / folder).is_dir() else []
    return files


@functools.cache
def _all_calls() -> list[tuple[Path, str, ast.Call]]:
    out = []
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)):
                out.append((path, ast.unparse(node.func), node))
    return out


def _calls(dotted: str) -> list[tuple[Path, ast.Call]]:
    return [(path, node) for path, name, node in _all_calls() if name == dotted]


def test_every_torch_load_in_the_code_passes_weights_only_true() -> None:
    calls = _calls("torch.load")
    assert len(calls) >= 3, "the scan found the known torch.load calls"
    unsafe = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, node in calls
        if not any(
            kw.arg == "weights_only"
            and isinstance(kw.value, ast.Constant)
            and kw.value.value is True
            for kw in node.keywords
        )
    ]
    assert unsafe == []


# The stand-alone predict.py shipped in exports cannot import the safe loader; in the app
# it only runs inside verify_export, which checks the bundle's .pt2 archives first.
STANDALONE = ROOT / "finetune_core" / "export" / "predict_template.py"


def test_no_other_unpickling_loader_is_called() -> None:
    """.pt2 programs load only through the safety check; nothing else unpickles files."""
    export_loads = [
        f"{p.relative_to(ROOT)}:{n.lineno}"
        for p, n in _calls("torch.export.load")
        if p.name != "safe_pt2.py" and p != STANDALONE
    ]
    assert export_loads == []
    for dotted in ("pickle.load", "pickle.loads", "torch.jit.load", "joblib.load", "dill.load"):
        assert [p for p, _ in _calls(dotted) if p != STANDALONE] == [], dotted
    verify = ROOT / "finetune_core" / "export" / "verify.py"
    assert [p for p, _ in _calls("check_archive") if p == verify], "verify checks .pt2 files"
    for path, node in _calls("np.load") + _calls("numpy.load"):
        assert not any(kw.arg == "allow_pickle" for kw in node.keywords), path


# --------------------------------------------------------------------------- run files
def _finished_run(manager: JobManager, dataset_id: str) -> str:
    run_id = manager.submit(quick(dataset_id))
    assert manager.wait(run_id, timeout=120) == RunStatus.SUCCEEDED
    return run_id


@pytest.mark.slow
def test_planted_pickle_in_last_checkpoint_fails_the_resume_and_never_runs(
    demo_ws, manager: JobManager, tmp_path: Path
) -> None:
    ws, ds = demo_ws
    run_id = _finished_run(manager, ds.id)
    marker = tmp_path / "pwned"
    last = ws.run_dir(run_id) / "checkpoints" / "last.pt"
    torch.save({"model_state": {}, "epoch": 1, "x": Payload(marker)}, last)
    ws.update_run(run_id, status=RunStatus.STOPPED)
    manager.resume(run_id)
    assert manager.wait(run_id, timeout=60) == RunStatus.FAILED
    run = ws.get_run(run_id)
    assert "last.pt cannot be read" in run.error and "not a Finetune Dashboard" in run.error
    assert not marker.exists()
    prove_live(lambda: torch.load(last, weights_only=False), marker)


@pytest.mark.slow
def test_planted_pickle_in_best_checkpoint_is_refused_by_evaluation_and_export(
    demo_ws, manager: JobManager, tmp_path: Path
) -> None:
    from finetune_core.evaluation.evaluate import evaluate_run
    from finetune_core.export import export_run

    ws, ds = demo_ws
    run_id = _finished_run(manager, ds.id)
    marker = tmp_path / "pwned"
    best = ws.run_dir(run_id) / "checkpoints" / "best.pt"
    torch.save({"model_state": {}, "x": Payload(marker)}, best)
    folder = RunFolder(ws.run_dir(run_id))
    with pytest.raises(RunError, match="best.pt cannot be read"):
        load_run_model(folder)
    with pytest.raises(RunError, match="cannot be read"):
        evaluate_run(folder, workspace=ws)
    with pytest.raises(RunError, match="cannot be read"):
        export_run(folder, "checkpoint", workspace=ws)
    assert not marker.exists()
    prove_live(lambda: torch.load(best, weights_only=False), marker)


@pytest.mark.slow
def test_planted_pickle_in_the_feature_cache_is_recomputed_not_run(
    demo_ws, manager: JobManager, tmp_path: Path
) -> None:
    ws, ds = demo_ws
    _finished_run(manager, ds.id)
    cached = sorted((ws.cache_dir / "features").glob("*.pt"))
    assert len(cached) == 2  # train and val features
    marker = tmp_path / "pwned"
    for path in cached:
        torch.save({"features": torch.zeros(1, 1), "labels": Payload(marker)}, path)
    run_id = manager.submit(quick(ds.id))
    assert manager.wait(run_id, timeout=120) == RunStatus.SUCCEEDED, ws.get_run(run_id).error
    assert not marker.exists()
    assert all(torch.load(p, weights_only=True)["features"].shape[0] > 1 for p in cached)


@pytest.mark.slow
def test_truncated_checkpoint_on_resume_fails_with_the_reason(demo_ws, manager: JobManager) -> None:
    ws, ds = demo_ws
    run_id = _finished_run(manager, ds.id)
    last = ws.run_dir(run_id) / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:4000])
    ws.update_run(run_id, status=RunStatus.INTERRUPTED)
    manager.resume(run_id)
    assert manager.wait(run_id, timeout=60) == RunStatus.FAILED
    assert "may be truncated" in ws.get_run(run_id).error
    assert "Traceback" in ws.get_run(run_id).traceback


@pytest.mark.slow
def test_uploaded_weights_with_a_payload_fail_the_run_and_never_run(
    demo_ws, manager: JobManager, tmp_path: Path
) -> None:
    ws, ds = demo_ws
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(3, 512), "x": Payload(marker)}, evil)
    run_id = manager.submit(quick(ds.id, weights=str(evil)))
    assert manager.wait(run_id, timeout=60) == RunStatus.FAILED
    assert "would run code from the file" in ws.get_run(run_id).error
    assert not marker.exists()
    prove_live(lambda: torch.load(evil, weights_only=False), marker)


# --------------------------------------------------------------------------- .pt2 backbones
class TinyBackbone(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


def _clean_pt2(path: Path) -> Path:
    program = torch.export.export(
        TinyBackbone().eval(),
        (torch.randn(2, 3, 32, 32),),
        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}},
    )
    torch.export.save(program, str(path))
    return path


def _rewrite(src: Path, dest: Path, change: Any) -> Path:
    """Copy the zip ``src`` to ``dest``; ``change(rel, data)`` returns new bytes (or None to
    drop the member) and may return extra members from ``change("", None)``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        top = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            rel = info.filename.split("/", 1)[1]
            data = change(rel, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
        for rel, data in (change("", None) or {}).items():
            zout.writestr(f"{top}/{rel}", data)
    return dest


def _saved(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _pickled_weight(marker: Path):
    def change(rel: str, data: bytes | None):
        if rel == "data/weights/model_weights_config.json":
            config = json.loads(data)
            config["config"]["conv.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        if rel == "data/weights/" + _weight_file(change.config_src, "conv.weight"):
            return _saved({"w": Payload(marker)})
        return data

    return change


def _weight_file(src: Path, fqn: str) -> str:
    with zipfile.ZipFile(src) as zf:
        name = next(n for n in zf.namelist() if n.endswith("model_weights_config.json"))
        return json.loads(zf.read(name))["config"][fqn]["path_name"]


def _sample_inputs(marker: Path):
    def change(rel: str, data: bytes | None):
        if rel == "data/sample_inputs/model.pt":
            return _saved((Payload(marker),))
        return data

    return change


def _opaque_constant(marker: Path):
    def change(rel: str, data: bytes | None):
        if rel == "data/constants/model_constants_config.json":
            config = json.loads(data)
            config.setdefault("config", {})["evil"] = {
                "path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                "tensor_meta": None,
            }  # fmt: skip
            return json.dumps(config).encode()
        if rel == "":
            return {"data/constants/opaque_obj_0": pickle.dumps(Payload(marker))}
        return data

    return change


def _native_library(marker: Path):
    def change(rel: str, data: bytes | None):
        if rel == "":
            return {"data/aotinductor/model/model.so": b"\x7fELF not really a library"}
        return data

    return change


HOSTILE_PT2 = {
    "pickled weight": (_pickled_weight, "pickled data"),
    "pickled sample inputs": (_sample_inputs, "pickled data"),
    "opaque object constant": (_opaque_constant, "Python object"),
    "compiled native library": (_native_library, "native code"),
}


@pytest.mark.parametrize("case", list(HOSTILE_PT2))
def test_hostile_pt2_backbones_are_refused_before_anything_is_unpickled(
    tmp_path: Path, case: str
) -> None:
    make, message = HOSTILE_PT2[case]
    good = _clean_pt2(tmp_path / "good.pt2")
    marker = tmp_path / "pwned"
    change = make(marker)
    change.config_src = good
    evil = _rewrite(good, tmp_path / "evil.pt2", change)
    with pytest.raises(UnsafeProgramError, match=message):
        check_archive(evil)
    with pytest.raises(WeightsError, match=message):
        load_exported_backbone(evil, 32)
    assert not marker.exists()
    if case != "compiled native library":
        prove_live(lambda: torch.export.load(str(evil)), marker)
    # the untouched program still loads and runs
    backbone, dim = load_exported_backbone(good, 32)
    assert dim == 4 and backbone(torch.zeros(3, 3, 32, 32)).shape == (3, 4)


def test_a_hostile_pt2_in_an_export_bundle_fails_verification_and_never_runs(
    tmp_path: Path,
) -> None:
    """verify_export runs the bundle's predict.py here; its .pt2 is checked before loading."""
    good = _clean_pt2(tmp_path / "good.pt2")
    marker = tmp_path / "pwned"
    change = _pickled_weight(marker)
    change.config_src = good
    bundle = BundlePaths(tmp_path / "bundle")
    bundle.root.mkdir()
    _rewrite(good, bundle.artefact("pt2"), change)
    bundle.predict.write_bytes(template_source())
    bundle.labels.write_text(json.dumps(["a", "b", "c", "d"]))
    bundle.preprocessing.write_text(json.dumps({"image_size": 32, "mean": [0] * 3, "std": [1] * 3}))
    bundle.model.write_text(json.dumps({"format": "pt2", "file": bundle.artefact("pt2").name}))
    samples = SampleInputs(batch=torch.randn(2, 3, 32, 32), files=[], source="2 random images")
    check = verify_export(bundle.root, "pt2", TinyBackbone().eval(), samples)
    assert check["passed"] is False and "UnsafeProgramError" in check["message"]
    assert not marker.exists()
    prove_live(lambda: torch.export.load(str(bundle.artefact("pt2"))), marker)


@pytest.mark.slow
def test_a_hostile_pt2_fails_the_run_with_a_reason_and_never_runs(
    demo_ws, manager: JobManager, tmp_path: Path
) -> None:
    ws, ds = demo_ws
    good = _clean_pt2(tmp_path / "good.pt2")
    marker = tmp_path / "pwned"
    change = _pickled_weight(marker)
    change.config_src = good
    evil = _rewrite(good, tmp_path / "evil.pt2", change)
    run_id = manager.submit(quick(ds.id, model="custom", weights=str(evil)))
    assert manager.wait(run_id, timeout=60) == RunStatus.FAILED
    assert "could run code from the file, so it was refused" in ws.get_run(run_id).error
    assert not marker.exists()
