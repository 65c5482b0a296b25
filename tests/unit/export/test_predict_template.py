"""predict_template.py is real code: it imports nothing of finetune_core, it agrees with the
bundle's layout, and copied into an unzipped export it runs as itself, with only the
third-party packages, and predicts what the trained model predicts."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from finetune_core.data import open_rgb
from finetune_core.data.images import IMAGE_EXTENSIONS
from finetune_core.export import FORMATS, TOLERANCE, BundlePaths, export_run, predict_template
from finetune_core.export.bundle import template_source
from finetune_core.export.writers import WRITERS

TEMPLATE = Path(predict_template.__file__)
# What an export's predict.py may need (numpy/onnxruntime only for ONNX), and no more.
THIRD_PARTY = ("torch", "torchvision", "PIL", "numpy", "onnxruntime")


def project_imports(source: str) -> list[str]:
    """Every import in ``source`` that reaches finetune_core (or is relative to a package)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["." * node.level + (node.module or "")]
        else:
            continue
        found += [n for n in names if n.startswith(".") or n.split(".")[0] == "finetune_core"]
    return found


def test_the_template_imports_nothing_of_finetune_core() -> None:
    source = TEMPLATE.read_text(encoding="utf-8")
    assert project_imports(source) == []
    assert project_imports("from finetune_core.export import formats\n")  # the check bites
    assert project_imports("from . import formats\n")
    strings = [
        n.value
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]
    assert not [s for s in strings if "finetune_core" in s]  # nor by importlib/__import__


def test_the_template_is_shipped_as_is_and_agrees_with_the_bundle_layout() -> None:
    assert template_source() == TEMPLATE.read_bytes()
    bundle = BundlePaths(Path("/bundle"))
    assert bundle.labels.name == predict_template.LABELS_FILE
    assert bundle.model.name == predict_template.MODEL_FILE
    assert bundle.preprocessing.name == predict_template.PREPROCESSING_FILE
    assert tuple(predict_template.LOADERS) == FORMATS == tuple(WRITERS)


def sandbox_python(tmp_path: Path) -> Path:
    """A virtual environment that sees the third-party packages, not finetune_core.

    finetune_core is installed editable, so ``python -I`` alone still imports it. The new
    environment lists the folders holding torch & co in a .pth file instead; the editable
    install's own .pth is not processed there, so finetune_core stays out of reach.
    """
    env_dir = tmp_path / "sandbox"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120
    )
    folders = []
    for name in THIRD_PARTY:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            folders.append(str(Path(spec.origin).resolve().parent.parent))
    [site] = list(env_dir.glob("lib/python*/site-packages"))
    (site / "third_party.pth").write_text("\n".join(dict.fromkeys(folders)) + "\n")
    return env_dir / "bin" / "python"


def run_isolated(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -I`` in ``cwd`` with no PYTHON* variables (no PYTHONPATH) passed on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(
        [str(python), "-I", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = sandbox_python(tmp_path_factory.mktemp("env"))
    here = tmp_path_factory.mktemp("probe")
    probe = run_isolated(python, "-c", "import finetune_core", cwd=here)
    assert probe.returncode != 0 and "No module named 'finetune_core'" in probe.stderr
    return python


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_py_runs_as_itself_in_an_unzipped_export(
    trained: dict[str, Any], sandbox: Path, fmt: str, tmp_path: Path
) -> None:
    run, loaded, ds = trained["run"], trained["loaded"], trained["dataset"]
    result = export_run(run, fmt)
    assert result.verified and result.path is not None, result.message
    with zipfile.ZipFile(result.path) as archive:
        archive.extractall(tmp_path)
    bundle = tmp_path / f"{run.id}-{fmt}"
    assert (bundle / "predict.py").read_bytes() == TEMPLATE.read_bytes()
    sources = [ds.image_path(r) for r in ds.rows("val")[:4]]
    images = []
    for i, source in enumerate(sources):
        name = f"image{i}{source.suffix}"
        shutil.copy(source, bundle / name)
        images.append(name)

    n = len(loaded.class_names)
    proc = run_isolated(sandbox, "predict.py", *images, "--json", "--top-k", str(n), cwd=bundle)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["errors"] == [] and [p["path"] for p in out["predictions"]] == images
    got = np.array(
        [
            [{t["label"]: t["prob"] for t in p["top_k"]}[label] for label in loaded.class_names]
            for p in out["predictions"]
        ]
    )
    expected = loaded.predict_images([open_rgb(p) for p in sources])
    assert np.abs(got - expected).max() <= TOLERANCE

    # The plain form prints path, label and probability per image.
    proc = run_isolated(sandbox, "predict.py", images[0], cwd=bundle)
    assert proc.returncode == 0, proc.stderr
    path, label, prob = proc.stdout.strip().split("\t")
    assert path == images[0] and label == loaded.class_names[int(expected[0].argmax())]
    assert float(prob) == pytest.approx(float(expected[0].max()), abs=1e-4)


def test_the_template_knows_the_dashboards_image_extensions() -> None:
    """The stand-alone script cannot import finetune_core, so it keeps a copy: the same one."""
    template = (Path(predict_template.__file__)).read_text()
    tree = ast.parse(template)
    [value] = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "EXTENSIONS" for t in node.targets)
    ]
    assert set(ast.literal_eval(value)) == set(IMAGE_EXTENSIONS)
