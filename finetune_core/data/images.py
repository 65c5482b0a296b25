"""Reading images safely: RGB conversion, EXIF orientation, and a probe for health checks.

Every image the product decodes goes through :func:`open_rgb` (training, preview,
prediction) or :func:`probe_image` (ingest), so both share one notion of "readable".
Never set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``: the probe relies on Pillow raising
for truncated files.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

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
    source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS, reduce_to: int | None = None
) -> Image.Image:
    """Decode an image to RGB with EXIF orientation applied.

    Grayscale, palette (with transparency), RGBA/LA (composited on white), CMYK (through
    its ICC profile when present), and 16-bit/32-bit grayscale are converted correctly;
    animations give their first frame. ``reduce_to`` lets JPEGs decode at a smaller
    scale that is still at least that many pixels on each side (much faster for photos).
    Raises :class:`ImageReadError` with a reason for anything unusable.
    """
    handle, close = _as_binary(source)
    try:
        img = _identify(handle, max_pixels)
        if reduce_to and img.format == "JPEG":
            img.draft("RGB", (reduce_to, reduce_to))
        _load(img)
        orientation = _orientation(img)
        try:
            rgb = to_rgb(img)
        except Exception as exc:  # Pillow raises many types on malformed data
            raise ImageReadError(f"cannot convert to RGB: {exc}", "unreadable") from exc
        return _apply_orientation(rgb, orientation)
    finally:
        if close:
            handle.close()


def probe_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Check that the file is a complete, decodable image; return its size, format and mode.

    Runs Pillow's ``verify()`` and then a full decode (JPEGs at reduced scale), the same
    conversion as :func:`open_rgb`, and raises :class:`ImageReadError` otherwise.
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
        if img.format == "JPEG":
            img.draft("RGB", (_PROBE_DRAFT, _PROBE_DRAFT))
        _load(img)
        orientation = _orientation(img)
        try:
            to_rgb(img)
        except Exception as exc:
            raise ImageReadError(f"cannot convert to RGB: {exc}", "unreadable") from exc
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageInfo(width=width, height=height, format=fmt, mode=mode)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a loaded image of any mode to 8-bit RGB."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode), "L").convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        "transparency" in img.info and mode in ("P", "L", "RGB", "1")
    ):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit, 32-bit integer or float grayscale to 0..255."""
    if mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64))
        if arr.size and arr.max() <= 1.0 and arr.min() >= 0.0:
            arr = arr * 255.0
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    wide = arr.astype(np.int64)
    if mode == "I" and (wide.size == 0 or wide.max() <= 255):
        return np.clip(wide, 0, 255).astype(np.uint8)  # 32-bit container holding 8-bit data
    wide = np.clip(wide, 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


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


def _apply_orientation(img: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    return img.transpose(method) if method is not None else img
