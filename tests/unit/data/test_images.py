"""open_rgb / probe_image: colour modes, EXIF orientation, formats and unusable files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune_core.data import ImageReadError, open_rgb, probe_image, to_rgb
from tests.helpers.data_files import image_bytes


def encode(img: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **save)
    return buffer.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


def test_rgb_image_round_trips():
    img = open_rgb(image_bytes(1, (20, 10), "PNG"))
    assert img.mode == "RGB" and img.size == (20, 10)


def test_grayscale_becomes_equal_channels():
    gray = Image.fromarray(np.array([[0, 100], [200, 255]], dtype=np.uint8), "L")
    arr = np.asarray(open_rgb(encode(gray, "PNG")))
    assert arr.shape == (2, 2, 3)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert arr[1, 0, 0] == 200


def test_palette_with_transparency_composites_on_white():
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    img.putpixel((0, 0), 0)  # transparent index
    img.putpixel((1, 0), 1)  # red
    data = encode(img, "PNG", transparency=0)
    arr = np.asarray(open_rgb(data))
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert tuple(arr[0, 1]) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_composites_on_white(mode: str):
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white
    rgba.putpixel((1, 0), (0, 0, 0, 255))  # opaque black stays black
    data = encode(rgba.convert(mode), "PNG")
    arr = np.asarray(open_rgb(data))
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert tuple(arr[0, 1]) == (0, 0, 0)


def test_cmyk_converts_to_rgb():
    cyan = Image.new("CMYK", (4, 4), (255, 0, 0, 0))
    for fmt in ("TIFF", "JPEG"):
        img = open_rgb(encode(cyan, fmt))
        r, g, b = (int(v) for v in np.asarray(img)[0, 0])
        assert img.mode == "RGB"
        assert r < 40 and g > 215 and b > 215, (fmt, r, g, b)


def test_16_bit_grayscale_is_scaled_not_clipped():
    arr16 = np.array([[0, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(arr16), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = np.asarray(open_rgb(data))[0, :, 0]
    assert out.tolist() == [0, 128, 255]


def test_32_bit_and_float_grayscale():
    wide = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I")
    assert np.asarray(to_rgb(wide))[0, :, 0].tolist() == [0, 255]
    narrow = Image.fromarray(np.array([[0, 200]], dtype=np.int32), "I")
    assert np.asarray(to_rgb(narrow))[0, :, 0].tolist() == [0, 200]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(unit))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    data = encode(img, "JPEG", exif=exif.tobytes(), quality=95)
    out = open_rgb(data)
    assert out.size == (20, 40)
    top, bottom = np.asarray(out)[2, 10], np.asarray(out)[37, 10]
    assert top[0] > 200 and top[2] < 60  # the red (left) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_probe_reports_size_after_orientation(tmp_path: Path):
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 8
    path = tmp_path / "rotated.jpg"
    path.write_bytes(encode(img, "JPEG", exif=exif.tobytes()))
    info = probe_image(path)
    assert (info.width, info.height, info.format, info.mode) == (20, 40, "JPEG", "RGB")


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    arr = np.asarray(open_rgb(buffer.getvalue()))
    assert arr[0, 0, 0] > 200 and arr[0, 0, 2] < 50


@pytest.mark.parametrize("fmt", ["WEBP", "BMP", "TIFF", "GIF", "PNG", "PPM"])
def test_common_formats_are_read(fmt: str, tmp_path: Path):
    data = image_bytes(3, (24, 16), fmt)
    assert open_rgb(data).size == (24, 16)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    info = probe_image(path)
    assert (info.width, info.height, info.format) == (24, 16, fmt)


def test_reduce_to_decodes_jpeg_smaller_but_not_below_request():
    data = image_bytes(4, (400, 300), "JPEG")
    full, small = open_rgb(data), open_rgb(data, reduce_to=64)
    assert full.size == (400, 300)
    assert min(small.size) >= 64 and small.size[0] < 400


def test_empty_file_is_reported(tmp_path: Path):
    with pytest.raises(ImageReadError) as err:
        open_rgb(b"")
    assert err.value.code == "empty_file" and "empty" in err.value.reason
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError) as err:
        probe_image(tmp_path / "e.jpg")
    assert err.value.code == "empty_file"


def test_random_bytes_are_not_an_image():
    with pytest.raises(ImageReadError) as err:
        open_rgb(np.random.default_rng(0).bytes(500))
    assert err.value.code == "not_an_image"


def test_truncated_jpeg_is_detected(tmp_path: Path):
    data = image_bytes(5, (64, 64), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as err:
        probe_image(path)
    assert err.value.code == "truncated"
    with pytest.raises(ImageReadError) as err:
        open_rgb(path)
    assert err.value.code == "truncated"


def test_corrupt_png_is_unreadable(tmp_path: Path):
    data = bytearray(image_bytes(6, (16, 16), "PNG"))
    data[60:80] = bytes(20)  # damage the image data (and its checksum no longer matches)
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError) as err:
        probe_image(path)
    assert err.value.code in ("unreadable", "truncated")


def test_decompression_bombs_are_refused_before_decoding(tmp_path: Path):
    over_our_limit = png_with_size(9000, 9000)  # 81 MP: above our 64 MP default
    with pytest.raises(ImageReadError) as err:
        open_rgb(over_our_limit)
    assert err.value.code == "decompression_bomb" and "9000x9000" in err.value.reason
    huge = png_with_size(30000, 30000)  # Pillow itself refuses this one
    path = tmp_path / "bomb.png"
    path.write_bytes(huge)
    with pytest.raises(ImageReadError) as err:
        probe_image(path, max_pixels=10**12)
    assert err.value.code == "decompression_bomb"
    with pytest.raises(ImageReadError) as err:
        open_rgb(image_bytes(7, (100, 100), "PNG"), max_pixels=5000)
    assert err.value.code == "decompression_bomb"


def test_missing_path_is_unreadable(tmp_path: Path):
    with pytest.raises(ImageReadError) as err:
        open_rgb(tmp_path / "nope.jpg")
    assert err.value.code == "unreadable"
