"""The one preprocessing is torchvision's Resize(N) + CenterCrop(N) on a PIL image, pixel
for pixel, for every shape (odd margins, upscaling, squares); the long-thin shortcut
stays within 1 of it; JPEGs are never decoded in draft mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from finetune_core.data.cache import _cache_key
from finetune_core.data.preprocess import (
    LONG_THIN_FACTOR,
    PREPROCESS_VERSION,
    inference_spec,
    preprocess_for_inference,
    resize_center_crop,
)


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def torchvision_way(image: Image.Image, size: int) -> np.ndarray:
    out = TF.center_crop(
        TF.resize(image, [size], interpolation=TF.InterpolationMode.BILINEAR), [size, size]
    )
    return np.asarray(out)


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [
        (300, 200, 32),  # landscape
        (200, 400, 32),  # portrait
        (251, 199, 24),  # odd margin: torchvision rounds the crop origin half to even
        (97, 61, 32),  # int(32 * 97 / 61) = 50, round() would give 51
        (20, 13, 32),  # smaller than the image size: upscaled
        (64, 64, 64),  # already the size: untouched
        (120, 120, 50),  # square
        (480, 33, 24),  # aspect 14.5: just under the long-thin shortcut
    ],
)
def test_resize_and_crop_are_torchvisions(width: int, height: int, size: int) -> None:
    image = noise(width, height, seed=width * height)
    ours = np.asarray(resize_center_crop(image, size))
    assert ours.shape == (size, size, 3)
    assert np.array_equal(ours, torchvision_way(image, size))


@pytest.mark.parametrize(("width", "height"), [(2000, 40), (35, 1700), (900, 30)])
def test_the_long_thin_shortcut_is_within_one_of_the_full_resize(width: int, height: int) -> None:
    size = 24
    assert max(width, height) * size / min(width, height) * size > LONG_THIN_FACTOR * size * size
    image = noise(width, height, seed=3)
    ours = np.asarray(resize_center_crop(image, size)).astype(int)
    assert np.abs(ours - torchvision_way(image, size).astype(int)).max() <= 1


def test_jpegs_are_decoded_at_full_resolution() -> None:
    buffer = io.BytesIO()
    noise(320, 240).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    full = Image.open(io.BytesIO(data)).convert("RGB")
    assert full.size == (320, 240)
    assert np.array_equal(
        preprocess_for_inference(data, 32), torchvision_way(full, 32).transpose(2, 0, 1)
    )
    # the same for a decoded image and for the file
    assert np.array_equal(preprocess_for_inference(full, 32), preprocess_for_inference(data, 32))


def test_the_spec_and_the_cache_key_carry_the_version() -> None:
    spec = inference_spec(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert spec["version"] == PREPROCESS_VERSION
    assert spec["resize"]["long_thin_factor"] == LONG_THIN_FACTOR
    assert spec["mean"] == [0.5] * 3 and spec["std"] == [0.25] * 3
    assert f"-p{PREPROCESS_VERSION}-" in _cache_key("f" * 64, "val", 32, ["a.jpg"])
