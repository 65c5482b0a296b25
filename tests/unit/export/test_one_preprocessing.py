"""predict == evaluate == export, and preprocessing.json is an exact spec.

On JPEG photos larger than the image size (landscape, portrait, one EXIF-rotated), the
probabilities of the evaluation (predictions.csv), of predict, of every export format
(through the bundle's own predict.py) and of an independent implementation written
from preprocessing.json alone (PIL + torchvision only) agree to 1e-5; the activation
map explains the very pixels predict classified; and the generated predict.py finds
images in a folder below a dot-folder.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms.v2 import functional as TF

from finetune_core.config import RunConfig
from finetune_core.data import ingest
from finetune_core.data.preprocess import preprocess_for_inference
from finetune_core.evaluation.evaluate import evaluate_run, read_predictions
from finetune_core.evaluation.predict import explain_image, predict_files
from finetune_core.export import FORMATS, export_run
from finetune_core.export.verify import load_predict_module
from finetune_core.models.loaded import load_run_model
from finetune_core.runs import RunFolder, RunPaths, save_config
from finetune_core.store import Workspace
from finetune_core.training.trainer import Trainer

pytestmark = pytest.mark.slow  # the module trains one small model
AGREE = 1e-5
SIZE = 32
# (width, height, EXIF orientation): all larger than SIZE, none square
PHOTOS = [(300, 200, 1), (200, 400, 1), (320, 240, 6), (251, 199, 1), (203, 301, 1)]


def photo(seed: int, width: int, height: int, orientation: int = 1) -> bytes:
    """A photo-like JPEG: smooth structure, noise and edges (JPEG decoding matters)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    base = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    noisy = np.asarray(base).astype(np.int16) + rng.integers(-40, 41, (height, width, 3))
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).filter(ImageFilter.SHARPEN)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A probe run trained on a train/ val/ folder of photos, evaluated."""
    root = tmp_path_factory.mktemp("photos")
    seed = 0
    for split, per_class in (("train", 3), ("val", len(PHOTOS))):
        for label in ("cat", "dog"):
            for i in range(per_class):
                seed += 1
                w, h, orientation = PHOTOS[i % len(PHOTOS)]
                path = root / split / label / f"{label}{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(photo(seed, w, h, orientation))
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    dataset = ingest(ws, root, name="photos").dataset
    run_dir = ws.run_dir("photo-run")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = RunConfig(
        dataset=dataset.id,
        model="resnet18",
        weights="none",
        strategy="probe",
        epochs=2,
        image_size=SIZE,
        batch_size=8,
        lr=1e-2,
        augmentation="none",
    )
    save_config(RunPaths(run_dir), cfg)
    Trainer(cfg, dataset, run_dir, ws.cache_dir).fit()
    run = RunFolder(run_dir)
    evaluate_run(run, workspace=ws, cache_dir=ws.cache_dir)
    rows = dataset.rows("val")
    files = [dataset.image_path(r) for r in rows]
    loaded = load_run_model(run)
    predicted = predict_files(loaded, [(f.name, f.read_bytes()) for f in files], k=2)
    by_path = {p["path"]: p["probs"] for p in read_predictions(run)}
    return {
        "ws": ws,
        "run": run,
        "loaded": loaded,
        "files": files,
        "predict": np.stack([p.probs for p in predicted]),
        "evaluate": np.stack([by_path[r.path] for r in rows]),
    }


def test_predict_equals_evaluate_on_photos_larger_than_the_image_size(photo_run) -> None:
    assert len(photo_run["files"]) == 2 * len(PHOTOS)
    # predictions.csv keeps 6 decimals: equal to within its rounding
    assert np.abs(photo_run["predict"] - photo_run["evaluate"]).max() <= AGREE
    # the decoded cache evaluation reads holds the pixels predict computes from the file
    assert not np.allclose(photo_run["predict"][:, 0], photo_run["predict"][0, 0])  # not constant


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_export_predicts_what_predict_predicts(photo_run, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    result = export_run(photo_run["run"], fmt, workspace=photo_run["ws"])
    assert result.verified and result.folder is not None, result.message
    module = load_predict_module(result.folder)  # the bundle's own predict.py
    predictor = module.Predictor(result.folder)
    batch = np.stack(
        [
            module.preprocess(module.load_image(f), predictor.preprocessing)
            for f in photo_run["files"]
        ]
    )
    got = predictor.probabilities(batch)
    assert np.abs(got - photo_run["predict"]).max() <= AGREE


def independent_input(path: Path, spec: dict[str, Any]) -> torch.Tensor:
    """preprocessing.json re-implemented from the file alone, with PIL and torchvision."""
    assert spec["resize"]["interpolation"] == "bilinear" and spec["resize"]["antialias"] is True
    assert spec["channel_order"] == "RGB" and spec["layout"] == "NCHW"
    assert spec["scale"].startswith("uint8 pixel / 255")
    size = spec["image_size"]
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")  # "exif_orientation": applied
    image = TF.resize(image, [size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    image = TF.center_crop(image, [size, size])
    x = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
    return TF.normalize(x, mean=spec["mean"], std=spec["std"])


def test_an_implementation_from_preprocessing_json_alone_reproduces_the_model(photo_run) -> None:
    result = export_run(photo_run["run"], "checkpoint", workspace=photo_run["ws"])
    assert result.folder is not None
    spec = json.loads((result.folder / "preprocessing.json").read_text())
    assert spec["image_size"] == SIZE
    x = torch.stack([independent_input(f, spec) for f in photo_run["files"]])
    with torch.no_grad():
        probs = torch.softmax(photo_run["loaded"].model(x), dim=1).numpy()
    assert np.abs(probs - photo_run["predict"]).max() <= AGREE
    # the bundle's predict.py follows the spec too, pixel for pixel
    module = load_predict_module(result.folder)
    ours = np.stack([module.preprocess(module.load_image(f), spec) for f in photo_run["files"]])
    assert np.abs(ours - x.numpy()).max() <= 1e-6


def test_the_bundle_and_the_core_preprocess_long_thin_images_alike(photo_run, tmp_path) -> None:
    result = export_run(photo_run["run"], "checkpoint", workspace=photo_run["ws"])
    assert result.folder is not None
    module = load_predict_module(result.folder)
    spec = json.loads((result.folder / "preprocessing.json").read_text())
    loaded = photo_run["loaded"]
    mean = np.asarray(loaded.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(loaded.std, np.float32).reshape(3, 1, 1)
    for i, (w, h) in enumerate([(2000, 40), (30, 1500), (700, 33)]):
        path = tmp_path / f"thin{i}.jpg"
        path.write_bytes(photo(100 + i, w, h))
        core = preprocess_for_inference(path, SIZE).astype(np.float32) / 255.0
        assert (
            np.abs(module.preprocess(module.load_image(path), spec) - (core - mean) / std).max()
            <= 1e-6
        )


def test_the_activation_map_explains_the_pixels_predict_classified(photo_run) -> None:
    loaded = photo_run["loaded"]
    for i, path in enumerate(photo_run["files"][:3]):
        data = path.read_bytes()
        explanation = explain_image(loaded, data)  # what the Predict page passes: the bytes
        pixels = np.asarray(explanation.image).transpose(2, 0, 1)
        assert np.array_equal(pixels, preprocess_for_inference(data, SIZE))
        top = int(photo_run["predict"][i].argmax())
        assert explanation.class_name == loaded.class_names[top]
        assert abs(explanation.probability - photo_run["predict"][i, top]) <= AGREE


def test_generated_predict_py_finds_images_below_a_dot_folder(photo_run, tmp_path) -> None:
    result = export_run(photo_run["run"], "torchscript", workspace=photo_run["ws"])
    assert result.folder is not None
    images = tmp_path / "x" / ".hidden" / "imgs"
    (images / "sub").mkdir(parents=True)
    (images / ".cache").mkdir()
    files = photo_run["files"]
    shutil.copy(files[0], images / "a.jpg")
    shutil.copy(files[1], images / "sub" / "b.jpg")
    shutil.copy(files[2], images / ".skip.jpg")  # hidden below the folder: still skipped
    shutil.copy(files[2], images / ".cache" / "c.jpg")
    proc = subprocess.run(
        [sys.executable, str(result.folder / "predict.py"), str(images), "--json", "--top-k", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["errors"] == []
    assert [Path(p["path"]).relative_to(images).as_posix() for p in out["predictions"]] == [
        "a.jpg",
        "sub/b.jpg",
    ]
    names = photo_run["loaded"].class_names
    for row, expected in zip(out["predictions"], photo_run["predict"][:2], strict=True):
        got = {t["label"]: t["prob"] for t in row["top_k"]}
        assert max(abs(got[n] - expected[k]) for k, n in enumerate(names)) <= AGREE
