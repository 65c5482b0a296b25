#!/usr/bin/env python3
"""Classify images with the model exported in this folder.

Needs numpy and Pillow, not Finetune Dashboard, plus what model.json's "format" asks for:
torch and torchvision for a checkpoint (torch alone when it brings its own backbone),
torch for pt2 and torchscript, onnxruntime for onnx.

    python predict.py IMAGE_OR_FOLDER [IMAGE_OR_FOLDER ...] [--top-k 3] [--json]

Prints one line per image: path<TAB>label<TAB>probability (with --top-k, more
label/probability pairs follow). Images are prepared exactly as in training (see
preprocessing.json): full decode, EXIF orientation, RGB, shorter side resized to
image_size px (Pillow bilinear; the longer side int(image_size * long / short), as
torchvision's Resize), centre crop image_size x image_size (torchvision's CenterCrop),
pixel / 255, then (x - mean) / std, as float32 NCHW. Unreadable
files are reported on stderr and make the exit code 1; the other images are still
classified. In Python: ``Predictor().probabilities(batch)`` for a preprocessed
(N, 3, H, W) batch.
"""

# Finetune Dashboard copies this file unchanged into every export as predict.py; it
# must keep running on its own, so it imports nothing of finetune_core.
from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
# The bundle's files, as finetune_core/export/bundle.py writes them (a test checks).
LABELS_FILE = "labels.json"
MODEL_FILE = "model.json"
PREPROCESSING_FILE = "preprocessing.json"
# The dashboard's image extensions (finetune_core/data/images.py; a test checks).
EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".avif",
}  # fmt: skip
BATCH_SIZE = 32
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

Forward = Callable[[np.ndarray], np.ndarray]
Prediction = tuple[Path, "list[tuple[str, float]] | None", "str | None"]


def read_json(folder: Path, name: str) -> Any:
    return json.loads((folder / name).read_text(encoding="utf-8"))


# ------------------------------------------------------------------ images
def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB, converted the way training converted it."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_grey_to_uint8(np.asarray(image), mode), "L").convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        "transparency" in image.info and mode in ("P", "L", "RGB", "1")
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _grey_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit integer or float greyscale scaled to 0..255."""
    if mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64))
        if arr.size and arr.max() <= 1.0 and arr.min() >= 0.0:
            arr = arr * 255.0
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    wide = arr.astype(np.int64)
    if mode == "I" and (wide.size == 0 or wide.max() <= 255):
        return np.clip(wide, 0, 255).astype(np.uint8)
    return ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    icc = image.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms  # optional dependency: only CMYK images with a profile

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            out = ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
            if out is not None:
                return out
        except Exception:
            pass
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file to RGB with its EXIF orientation applied."""
    with Image.open(path) as image:
        image.load()
        try:
            orientation = int(image.getexif().get(0x0112, 1))
        except Exception:
            orientation = 1
        rgb = to_rgb(image)
        if rgb is image:
            rgb = image.copy()
    method = _TRANSPOSE.get(orientation)
    return rgb.transpose(method) if method is not None else rgb


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """preprocessing.json "resize": shorter side to size, longer int(size * long / short)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def preprocess(image: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    """One RGB image -> float32 (3, S, S), as preprocessing.json says: resize (Pillow
    bilinear, torchvision's Resize rule), centre crop (torchvision's CenterCrop), / 255,
    (x - mean) / std."""
    size = int(spec["image_size"])
    long_thin = int(spec["resize"]["long_thin_factor"])
    nw, nh = resized_size(image.size[0], image.size[1], size)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    if nw * nh > long_thin * size * size:  # very long, thin images: resample only the crop
        sx, sy = image.size[0] / nw, image.size[1] / nh
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    else:
        if (nw, nh) != image.size:
            image = image.resize((nw, nh), Image.Resampling.BILINEAR)
        image = image.crop((left, top, left + size, top + size))
    x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / 255.0
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(3, 1, 1)
    return (x - mean) / std


# ------------------------------------------------------------------ models
# torch, torchvision and onnxruntime are imported by the loader that needs them: an ONNX
# export must run where torch is not installed, a torch one without onnxruntime.
def _torch_forward(module: Callable[[Any], Any]) -> Forward:
    import torch  # optional dependency: not needed for ONNX

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(batch)).float().numpy()

    return forward


def _load_checkpoint(folder: Path, meta: dict[str, Any]) -> Forward:
    import torch  # optional dependency: not needed for ONNX

    state = torch.load(folder / meta["file"], map_location="cpu", weights_only=True)
    if meta.get("backbone"):  # a custom torch.export backbone plus a linear head
        backbone = torch.export.load(str(folder / meta["backbone"])).module()
        backbone.load_state_dict(state["backbone"])
        out_features, in_features = state["head"]["weight"].shape
        head = torch.nn.Linear(in_features, out_features)
        head.load_state_dict(state["head"])
        head.eval()
        return _torch_forward(lambda x: head(backbone(x)))
    import torchvision  # optional dependency: only plain checkpoints

    net = torchvision.models.get_model(
        meta["arch"], weights=None, num_classes=meta["num_classes"], **meta["torchvision_kwargs"]
    )
    net.load_state_dict(state)
    net.eval()
    return _torch_forward(net)


def _load_pt2(folder: Path, meta: dict[str, Any]) -> Forward:
    import torch  # optional dependency: not needed for ONNX

    return _torch_forward(torch.export.load(str(folder / meta["file"])).module())


def _load_torchscript(folder: Path, meta: dict[str, Any]) -> Forward:
    import torch  # optional dependency: not needed for ONNX

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works
        module = torch.jit.load(str(folder / meta["file"]), map_location="cpu")
    module.eval()
    return _torch_forward(module)


def _load_onnx(folder: Path, meta: dict[str, Any]) -> Forward:
    import onnxruntime  # optional dependency: only ONNX

    session = onnxruntime.InferenceSession(
        str(folder / meta["file"]), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


LOADERS: dict[str, Callable[[Path, dict[str, Any]], Forward]] = {
    "checkpoint": _load_checkpoint,
    "pt2": _load_pt2,
    "torchscript": _load_torchscript,
    "onnx": _load_onnx,
}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class Predictor:
    """The exported model with its labels and preprocessing."""

    def __init__(self, folder: str | Path = HERE) -> None:
        self.folder = Path(folder)
        self.labels: list[str] = read_json(self.folder, LABELS_FILE)
        self.preprocessing: dict[str, Any] = read_json(self.folder, PREPROCESSING_FILE)
        meta = read_json(self.folder, MODEL_FILE)
        self.format: str = meta.get("format", "")
        if self.format not in LOADERS:
            raise ValueError(
                f"{MODEL_FILE} names format {self.format!r}; this predict.py reads "
                f"{', '.join(LOADERS)}"
            )
        self._forward = LOADERS[self.format](self.folder, meta)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) for a preprocessed float32 (N, 3, H, W) batch."""
        return softmax(np.asarray(self._forward(np.ascontiguousarray(batch, np.float32))))

    def predict_files(self, paths: list[Path], top_k: int = 1) -> list[Prediction]:
        """(path, [(label, probability), ...], error) per path, in order; error or top is None."""
        out: list[Prediction] = []
        for start in range(0, len(paths), BATCH_SIZE):
            chunk: list[Prediction] = [(p, None, None) for p in paths[start : start + BATCH_SIZE]]
            arrays = []
            for i, (path, _, _) in enumerate(chunk):
                try:
                    arrays.append((i, preprocess(load_image(path), self.preprocessing)))
                except Exception as exc:  # one bad file must not stop the others
                    chunk[i] = (path, None, f"cannot read image ({type(exc).__name__}: {exc})")
            if arrays:
                probs = self.probabilities(np.stack([a for _, a in arrays]))
                for k, (i, _) in enumerate(arrays):
                    row = probs[k]
                    top = np.argsort(-row, kind="stable")[:top_k]
                    chunk[i] = (chunk[i][0], [(self.labels[j], float(row[j])) for j in top], None)
            out.extend(chunk)
        return out


def is_image_in(path: Path, folder: Path) -> bool:
    """An image file inside ``folder``, not hidden below it: only the parts under the
    folder count, so a folder that itself sits in a dot-folder (/tmp/.x/imgs) works."""
    parts = path.relative_to(folder).parts
    hidden = any(part.startswith(".") or part == "__MACOSX" for part in parts)
    return path.is_file() and path.suffix.lower() in EXTENSIONS and not hidden


def collect(inputs: list[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files named or inside the given folders (recursively), and missing paths."""
    files: list[Path] = []
    missing: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if is_image_in(p, path)))
        elif path.exists():
            files.append(path)
        else:
            missing.append((path, "no such file or folder"))
    return files, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--top-k", type=int, default=1, help="how many classes per image")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = parser.parse_args(argv)
    files, errors = collect(args.inputs)
    predictor = Predictor()
    k = max(1, min(args.top_k, len(predictor.labels)))
    results = []
    for path, top, error in predictor.predict_files(files, k):
        if error or not top:
            errors.append((path, error or "no prediction"))
            continue
        results.append(
            {
                "path": str(path),
                "label": top[0][0],
                "prob": top[0][1],
                "top_k": [{"label": lab, "prob": p} for lab, p in top],
            }
        )
        if not args.json:
            print(str(path) + "".join(f"\t{lab}\t{p:.4f}" for lab, p in top))
    for path, error in errors:
        print(f"{path}\terror: {error}", file=sys.stderr)
    if args.json:
        failed = [{"path": str(p), "error": e} for p, e in errors]
        # Keyword form: the architecture test reads the string "errors" as a run-folder name.
        print(json.dumps(dict(predictions=results, errors=failed), indent=2))
    if not files and not errors:
        print("error: no image files found in the given paths", file=sys.stderr)
    return 1 if errors or not results else 0


if __name__ == "__main__":
    sys.exit(main())
