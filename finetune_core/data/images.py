"""Reading images safely: RGB conversion, EXIF orientation, and a probe for health checks.

Every image the product decodes goes through :func:`open_rgb` (training, preview,
prediction) or :func:`probe_image` (ingest), so both share one notion of "readable".
Never set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``: the probe relies on Pillow raising
for truncated files.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from finetune_core.data.decode_budget import (
    ALPHA_MODES,
    STRIP_PIXELS,
    WIDE_GREY_MODES,
    budget_reason,
    decode_budget,
    decode_cost,
    image_decode_limit,
    jpeg_coefficients,
)

# 64 megapixels (8000 x 8000) is far beyond what a classifier needs and small enough
# that decoding one image cannot exhaust memory.
DEFAULT_MAX_PIXELS = 64_000_000

# Extensions accepted as image candidates (case-insensitive). Content decides in the end.
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff",
        ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".avif",
    }
)  # fmt: skip
# The same list as file-uploader types (no dot).
UPLOAD_TYPES = sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)

_ORIENTATION_TAG = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# JPEGs are probed at reduced scale: libjpeg still reads every byte (so truncation is
# detected) but skips most of the inverse DCT work.
_PROBE_DRAFT = 64

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


class ImageReadError(Exception):
    """An image cannot be used. ``code`` is a health-finding code, ``reason`` a sentence."""

    def __init__(self, reason: str, code: str = "unreadable") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class ImageInfo:
    """What the probe learned about a readable image (size after EXIF orientation)."""

    width: int
    height: int
    format: str
    mode: str


def open_rgb(
    source: ImageSource,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reduce_to: int | None = None,
    max_bytes: int | None = None,
) -> Image.Image:
    """Decode an image to RGB with EXIF orientation applied.

    Grayscale, palette (with transparency), RGBA/LA (composited on white), CMYK (through
    its ICC profile when present), and 16-bit/32-bit grayscale are converted correctly;
    animations give their first frame. ``reduce_to`` lets JPEGs decode at a smaller
    scale that is still at least that many pixels on each side (much faster for photos).
    The decode waits for its share of the process's decode memory (see
    :func:`decode_budget`); a JPEG whose decode would exceed ``max_bytes`` (default
    :func:`image_decode_limit`) is decoded at a reduced scale, any other such image is
    refused. Raises :class:`ImageReadError` with a reason for anything unusable.
    """
    with _opened(source) as handle:
        img = _identify(handle, max_pixels)
        cost = _fit(img, max_bytes, reduce_to)
        with decode_budget().reserve(cost):
            return _decode_rgb(img, cost, max_bytes)


@contextmanager
def rgb_image(
    source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int | None = None
) -> Iterator[Image.Image]:
    """:func:`open_rgb` (full scale) as a context: the decode memory stays reserved until
    the block ends, then the image is closed. For decode-then-resize work on many threads,
    so the full-size image counts against the budget for as long as it lives."""
    with _opened(source) as handle:
        img = _identify(handle, max_pixels)
        cost = _fit(img, max_bytes, None)
        with decode_budget().reserve(cost):
            rgb = _decode_rgb(img, cost, max_bytes)
            try:
                yield rgb
            finally:
                rgb.close()


def probe_image(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int | None = None
) -> ImageInfo:
    """Check that the file is a complete, decodable image; return its size, format and mode.

    Runs Pillow's ``verify()`` and then a full decode (JPEGs at reduced scale), the same
    conversion as :func:`open_rgb` under the same memory rules, and raises
    :class:`ImageReadError` otherwise.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        img = _identify(handle, max_pixels)
        fmt, mode, (width, height) = img.format or "", img.mode, img.size
        try:
            img.verify()
        except Exception as exc:
            code = "truncated" if "trunc" in str(exc).lower() else "unreadable"
            raise ImageReadError(f"damaged {fmt or 'image'} file: {exc}", code) from exc
        handle.seek(0)
        img = _identify(handle, max_pixels)
        cost = _fit(img, max_bytes, _PROBE_DRAFT)
        with decode_budget().reserve(cost):
            _load(img)
            orientation = _orientation(img)
            _converted(img).close()
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageInfo(width=width, height=height, format=fmt, mode=mode)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a loaded image of any mode to 8-bit RGB (``img`` itself when it is RGB)."""
    return _to_rgb(img, consume=False)


def _to_rgb(img: Image.Image, consume: bool) -> Image.Image:
    """``consume``: ``img`` is closed as soon as it is no longer needed (before the RGB
    image is made, where possible), so its memory and the RGB copy do not add up."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in WIDE_GREY_MODES:
        grey = _wide_grey_to_l(img)
        _release(img, consume)
        return grey.convert("RGB")
    if mode in ALPHA_MODES or ("transparency" in img.info and mode in ("P", "L", "RGB", "1")):
        rgba = img if mode == "RGBA" else img.convert("RGBA")
        if rgba is not img:
            _release(img, consume)
        # Composited a strip at a time: a whole alpha channel would be one more copy.
        width, height = rgba.size
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        for y in range(0, height, max(1, STRIP_PIXELS // width)):
            box = (0, y, width, min(height, y + max(1, STRIP_PIXELS // width)))
            piece = rgba.crop(box)
            out.paste(piece, box, mask=piece.getchannel("A"))
        _release(rgba, consume or rgba is not img)
        return out
    out = _cmyk_to_rgb(img) if mode == "CMYK" else img.convert("RGB")
    _release(img, consume)
    return out


def _release(img: Image.Image, consume: bool) -> None:
    if consume:
        img.close()


def _wide_grey_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit or float greyscale to 8-bit, a strip of rows at a time: the wide
    intermediate arrays stay a few MB whatever the image size (v1 made int64/float64
    copies of the whole image, 1.3-1.8 GB for a 0.1 MB PNG or TIFF)."""
    width, height = img.size
    rows = max(1, STRIP_PIXELS // width)
    strips = [(y, min(height, y + rows)) for y in range(0, height, rows)]

    def strip(y0: int, y1: int) -> np.ndarray:
        return np.asarray(img.crop((0, y0, width, y1)))

    # The scaling depends on the whole image's range: one pass to learn it.
    if img.mode == "F":
        unit = all(_float_is_unit(strip(*s)) for s in strips)
    elif img.mode == "I":
        unit = all(int(strip(*s).max()) <= 255 for s in strips)
    else:
        unit = False
    out = np.empty((height, width), dtype=np.uint8)
    for y0, y1 in strips:
        out[y0:y1] = _to_uint8(strip(y0, y1), img.mode, unit)
    return Image.fromarray(out, "L")


def _float_is_unit(arr: np.ndarray) -> bool:
    """Every value in [0, 1] once NaN counts as 0 (v1's nan_to_num rule), without a copy."""
    return bool((((arr >= 0) & (arr <= 1)) | np.isnan(arr)).all())


def _to_uint8(arr: np.ndarray, mode: str, unit: bool) -> np.ndarray:
    """Scale 16-bit, 32-bit integer or float grayscale to 0..255. ``unit``: for "F", the
    whole image lies in [0, 1] (scaled by 255); for "I", it holds 8-bit data."""
    if mode == "F":
        values = arr.astype(np.float64)
        np.nan_to_num(values, copy=False)
        if unit:
            values *= 255.0
        np.rint(values, out=values)
        return np.clip(values, 0, 255, out=values).astype(np.uint8)
    wide = arr.astype(np.int64)
    if mode == "I" and unit:
        return np.clip(wide, 0, 255, out=wide).astype(np.uint8)  # 32-bit holding 8-bit data
    np.clip(wide, 0, 65535, out=wide)
    wide *= 255
    wide += 32767
    wide //= 65535
    return wide.astype(np.uint8)


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(
                img, src, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
            if out is not None:
                return out
        except Exception:  # a broken profile falls back to the plain conversion
            pass
    return img.convert("RGB")


@contextmanager
def _opened(source: ImageSource) -> Iterator[BinaryIO]:
    handle, close = _as_binary(source)
    try:
        yield handle
    finally:
        if close:
            handle.close()


def _as_binary(source: ImageSource) -> tuple[BinaryIO, bool]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageReadError("file is empty (0 bytes)", "empty_file")
        return io.BytesIO(bytes(source)), True
    if isinstance(source, (str, os.PathLike)):
        try:
            handle = open(source, "rb")  # noqa: SIM115 - closed by the caller
        except OSError as exc:
            raise ImageReadError(f"cannot open file: {exc.strerror or exc}", "unreadable") from exc
        return handle, True
    return source, False


def _identify(handle: BinaryIO, max_pixels: int) -> Image.Image:
    start = handle.tell()
    if not handle.read(1):
        raise ImageReadError("file is empty (0 bytes)", "empty_file")
    handle.seek(start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(handle)
        except Image.DecompressionBombError as exc:
            raise ImageReadError(_bomb_reason(None, max_pixels), "decompression_bomb") from exc
        except UnidentifiedImageError as exc:
            raise ImageReadError("not an image file Pillow can read", "not_an_image") from exc
        except Exception as exc:
            raise ImageReadError(f"cannot open image: {exc}", "unreadable") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageReadError(f"image has an invalid size {width}x{height}", "unreadable")
    if width * height > max_pixels:
        raise ImageReadError(_bomb_reason((width, height), max_pixels), "decompression_bomb")
    return img


def _load(img: Image.Image) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img.load()
        except Image.DecompressionBombError as exc:
            raise ImageReadError(_bomb_reason(img.size, 0), "decompression_bomb") from exc
        except Exception as exc:
            message = str(exc)
            code = "truncated" if "trunc" in message.lower() else "unreadable"
            raise ImageReadError(f"cannot decode image: {message}", code) from exc


def _bomb_reason(size: tuple[int, int] | None, max_pixels: int) -> str:
    dims = f"{size[0]}x{size[1]} pixels" if size else "too many pixels"
    limit = f" (limit {max_pixels:,})" if max_pixels else ""
    return f"image is {dims}{limit}: a possible decompression bomb, not decoded"


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if value in _TRANSPOSE_FOR_ORIENTATION else 1
    except Exception:  # malformed EXIF must not make a readable image unreadable
        return 1


def _decode_rgb(img: Image.Image, reserved: int, max_bytes: int | None) -> Image.Image:
    """Load, convert and rotate an image that :func:`_fit` accepted."""
    _load(img)
    orientation = _orientation(img)
    method = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    if method is not None:
        # PNG may name its orientation only after the pixels: check the rotation's copy.
        limit = image_decode_limit() if max_bytes is None else max_bytes
        cost = decode_cost(img, orientation)
        if cost > max(reserved, limit):
            raise ImageReadError(budget_reason(img, cost, limit), "decompression_bomb")
    rgb = _converted(img)
    if method is None:
        return rgb
    out = rgb.transpose(method)
    rgb.close()
    return out


def _converted(img: Image.Image) -> Image.Image:
    try:
        return _to_rgb(img, consume=True)
    except Exception as exc:  # Pillow raises many types on malformed data
        raise ImageReadError(f"cannot convert to RGB: {exc}", "unreadable") from exc


def decode_estimate(
    source: ImageSource, *, probe: bool = False, max_bytes: int | None = None
) -> int:
    """The bytes :func:`open_rgb` (``probe``: :func:`probe_image`) reserves to decode
    ``source``, with the same draft decisions; over the limit the image is refused."""
    limit = image_decode_limit() if max_bytes is None else max_bytes
    with _opened(source) as handle:
        return _plan(_identify(handle, 2**62), limit, _PROBE_DRAFT if probe else None)


def _fit(img: Image.Image, max_bytes: int | None, reduce_to: int | None) -> int:
    """The bytes decoding ``img`` will take (see :func:`_plan`); refused over the limit."""
    limit = image_decode_limit() if max_bytes is None else max_bytes
    cost = _plan(img, limit, reduce_to)
    if cost > limit:
        raise ImageReadError(budget_reason(img, cost, limit), "decompression_bomb")
    return cost


def _plan(img: Image.Image, limit: int, reduce_to: int | None) -> int:
    """The bytes decoding ``img`` will take; a JPEG over ``limit`` is drafted to the
    largest scale (1/2, 1/4, 1/8) that fits."""
    orientation = _orientation_before_load(img)
    coefficients = jpeg_coefficients(img) if img.format in ("JPEG", "MPO") else 0
    if img.format in ("JPEG", "MPO"):
        width, height = img.size
        scale = 1
        for scale in (1, 2, 4, 8):
            scaled = (math.ceil(width / scale), math.ceil(height / scale))
            if decode_cost(img, orientation, coefficients, scaled) <= limit:
                break
        request = (max(1, width // scale), max(1, height // scale))
        if reduce_to:
            request = (min(request[0], reduce_to), min(request[1], reduce_to))
        if request != (width, height):
            img.draft("RGB", request)
    return decode_cost(img, orientation, coefficients)


def _orientation_before_load(img: Image.Image) -> int:
    """The EXIF orientation where it is known without decoding (PNG's getexif would)."""
    try:
        if img.format == "TIFF":
            value = img.tag_v2.get(_ORIENTATION_TAG, 1)  # type: ignore[attr-defined]
        elif img.info.get("exif"):
            exif = Image.Exif()
            exif.load(img.info["exif"])
            value = exif.get(_ORIENTATION_TAG, 1)
        else:
            return 1
        return int(value) if value in _TRANSPOSE_FOR_ORIENTATION else 1
    except Exception:
        return 1
