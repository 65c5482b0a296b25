"""THE image preprocessing: from a file to the uint8 pixels a model sees, and its spec.

Training's decoded cache, evaluation, predict (CLI and page), Grad-CAM, export
verification and the export bundle's ``preprocessing.json`` all come from here, so one
image gives one tensor everywhere. The resize and crop are exactly torchvision's
``Resize(size)`` + ``CenterCrop(size)`` on a Pillow image (bilinear, antialiased), so
anyone can re-implement :func:`inference_spec` from the JSON alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from finetune_core.data.images import ImageSource, rgb_image

# Bumped whenever the pixels this module produces change: the decoded-image and feature
# caches include it in their keys, so no cache made by an older rule is ever reused.
PREPROCESS_VERSION = 2
# Above this many times size x size pixels the full resize is skipped (a 60000x1 image
# would resize to gigapixels) and only the region the centre crop keeps is resampled.
LONG_THIN_FACTOR = 16


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``size``: torchvision's rule,
    the longer side is ``int(size * long / short)`` (truncated, not rounded)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def crop_origin(width: int, height: int, size: int) -> tuple[int, int]:
    """(left, top) of the centre ``size`` x ``size`` crop: torchvision's CenterCrop, which
    rounds half to even (Python's ``round``)."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bilinear) and crop the centre square."""
    nw, nh = resized_size(*image.size, size)
    left, top = crop_origin(nw, nh, size)
    if nw * nh > LONG_THIN_FACTOR * size * size:
        # Resample only the source region the crop keeps (Pillow's box): the same filter
        # and scale, equal to the full resize up to a rounding of 1 in a few pixels.
        sx, sy = image.size[0] / nw, image.size[1] / nh
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if (nw, nh) != image.size:
        image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    return image.crop((left, top, left + size, top + size))


def to_uint8_chw(image: Image.Image, size: int) -> np.ndarray:
    """A decoded image as uint8 (3, size, size): RGB, resized and centre-cropped."""
    # convert() copies even an RGB image: a whole-image copy for nothing.
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    arr = np.asarray(resize_center_crop(rgb, size), dtype=np.uint8)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess_for_inference(source: ImageSource | Image.Image, size: int) -> np.ndarray:
    """An image file (path, bytes, stream) or a decoded image as the model's uint8
    (3, size, size) input: full-resolution decode (never JPEG draft mode), RGB, EXIF
    orientation, resize, centre crop. Raises ImageReadError for an unusable file. The
    full-size image counts against the process's decode budget until it is resized."""
    if isinstance(source, Image.Image):
        return to_uint8_chw(source, size)
    with rgb_image(source) as image:
        return to_uint8_chw(image, size)


def inference_spec(
    size: int, mean: tuple[float, ...] | list[float], std: tuple[float, ...] | list[float]
) -> dict[str, Any]:
    """What this module does, exactly enough to re-implement (preprocessing.json)."""
    return {
        "version": PREPROCESS_VERSION,
        "image_size": size,
        "decode": "Pillow, full resolution (no JPEG draft/reduced decoding); first frame",
        "exif_orientation": "applied, as PIL.ImageOps.exif_transpose",
        "color": (
            "RGB: Image.convert('RGB'); images with transparency (RGBA, LA, PA, or P/L/RGB "
            "with a transparent colour) composited on white; CMYK through its ICC profile "
            "when it has one; 16-bit greyscale scaled by 255/65535, rounded"
        ),
        "resize": {
            "rule": "shorter side to image_size; longer side int(image_size * long / short)",
            "equivalent": "torchvision.transforms.v2.Resize(image_size) on a PIL image",
            "interpolation": "bilinear",
            "library": "Pillow Image.resize(..., Image.Resampling.BILINEAR), no reducing_gap",
            "antialias": True,
            "long_thin_factor": LONG_THIN_FACTOR,
            "long_thin": (
                "when the resized image would exceed long_thin_factor x image_size^2 "
                "pixels, only the crop region is resampled (Image.resize with box=crop "
                "region in source coordinates); equal to the full resize up to 1 in a few "
                "pixel values"
            ),
        },
        "crop": {
            "rule": "centre image_size x image_size; left = int(round((width - image_size) "
            "/ 2.0)), top likewise (round half to even)",
            "equivalent": "torchvision.transforms.v2.CenterCrop(image_size)",
        },
        "channel_order": "RGB",
        "layout": "NCHW",
        "dtype": "float32",
        "scale": "uint8 pixel / 255 -> float32 in [0, 1]",
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "normalize": "(x - mean) / std per channel, in float32",
    }
