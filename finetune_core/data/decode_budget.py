"""The decode budget: how much memory decoding an image takes, and who may decode now.

Bytes, not pixels (issue 15 item 6): a 0.12 MB 16-bit PNG or a 0.37 MB float TIFF of
64 megapixels decoded into 1.3-1.8 GB in v1. :func:`decode_cost` counts an image's bytes
a pixel by mode and format before it is decoded, :func:`image_decode_limit` is what one
image may take, and :class:`DecodeBudget` bounds what every decode in flight in this
process takes together, so the number of decoders at work follows memory, not cores.
"""

from __future__ import annotations

import math
import os
import resource
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

DEFAULT_MAX_DECODE_BYTES = 512 * 2**20  # 64 MP of RGB with its rotated copy still fits
DEFAULT_DECODE_MEMORY = 2**30  # per process, or a quarter of the memory available if less
MIN_DECODE_MEMORY = 256 * 2**20
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
STRIP_PIXELS = 1 << 18  # wide greyscale is scaled this many pixels at a time
# Pillow keeps 1, L and P in one byte a pixel, I;16 in two, every other mode in four.
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Decoders holding whole-image buffers of their own (bytes a pixel, measured with Pillow
# 13: libwebp's canvases about 11, libavif's YUV planes and RGB output about 5).
_DECODER_BYTES = {"WEBP": 12, "AVIF": 10}
# Decoders writing straight into the image (JPEG and TIFF are counted from their headers).
_PLAIN_DECODERS = frozenset({"PNG", "GIF", "BMP", "DIB", "PPM", "ICO", "TGA", "PCX", "SGI"})
_SLACK = 4 * 2**20  # the decoder's row buffers, the file handle, the numpy wrappers

# EXIF orientations that transpose the image (a copy of the RGB image).
ROTATING_ORIENTATIONS = frozenset(range(2, 9))


def decode_cost(
    img: Image.Image,
    orientation: int = 1,
    coefficients: int = 0,
    size: tuple[int, int] | None = None,
) -> int:
    """The most memory (bytes) decoding ``img`` (opened, not loaded) to RGB takes at any
    moment: its pixels in Pillow's layout for its mode, the decoder's own buffers
    (``coefficients``: a progressive JPEG's), the RGB conversion's copies (the original
    is closed as soon as it is converted) and the EXIF rotation's copy. ``size`` is the
    size it will decode at (a JPEG draft). Checked against measured peaks for every mode
    in tests/robustness/test_decode_budget.py."""
    width, height = size or img.size
    pixels = width * height
    mode = img.mode
    native = _PIXEL_BYTES.get(mode, 4)
    if mode == "RGB" and "transparency" not in img.info:
        convert = native
    elif mode in WIDE_GREY_MODES:
        convert = max(native + 1, 1 + 4)  # the original + 8-bit, then 8-bit + RGB
    elif mode in ALPHA_MODES or "transparency" in img.info:
        convert = 4 + 4  # RGBA + the white background it is composited on, in strips
    else:
        convert = native + 4
    rotate = 4 + 4 if orientation in ROTATING_ORIENTATIONS else 0
    strips = 3 * 8 * STRIP_PIXELS if mode in WIDE_GREY_MODES else 0
    extra = _decoder_bytes(img, pixels, coefficients)
    return max(native, convert, rotate) * pixels + extra + strips + _SLACK


def _decoder_bytes(img: Image.Image, pixels: int, coefficients: int) -> int:
    fmt = img.format or ""
    if fmt in ("JPEG", "MPO"):
        return coefficients
    if fmt == "TIFF":
        return _tiff_buffer(img)
    if fmt in _DECODER_BYTES:
        return _DECODER_BYTES[fmt] * pixels
    return 0 if fmt in _PLAIN_DECODERS else 4 * pixels  # unknown: assume one more copy


def _tiff_buffer(img: Image.Image) -> int:
    """libtiff decodes a strip (or tile) at a time into a buffer of its own: one strip
    can be the whole image (a 0.25 MB float TIFF then takes twice its 256 MB)."""
    width, height = img.size
    try:
        tags = img.tag_v2  # type: ignore[attr-defined]
        bits = tags.get(258, (8,))
        bits = tuple(bits) if isinstance(bits, (tuple, list)) else (int(bits),)
        samples = int(tags.get(277, len(bits)))
        pixel_bits = sum(bits) if len(bits) > 1 else bits[0] * samples
        if 322 in tags and 323 in tags:
            return math.ceil(int(tags[322]) * pixel_bits / 8) * int(tags[323])
        rows = min(height, int(tags.get(278, height)))
        return math.ceil(width * pixel_bits / 8) * rows
    except Exception:  # malformed tags: assume one strip of 8 bytes a pixel
        return 8 * width * height


def jpeg_coefficients(img: Image.Image) -> int:
    """A progressive JPEG keeps every DCT coefficient (2 bytes) of the full-size image
    until the last scan, whatever scale it is drafted to."""
    if not img.info.get("progressive") and not img.info.get("progression"):
        return 0
    width, height = img.size
    layers = getattr(img, "layer", None) or [(0, 1, 1, 0)] * len(img.getbands())
    hmax = max(layer[1] for layer in layers) or 1
    vmax = max(layer[2] for layer in layers) or 1
    total = 0
    for _, h, v, _ in layers:
        blocks_x = math.ceil(math.ceil(width * h / hmax) / 8) + 1
        blocks_y = math.ceil(math.ceil(height * v / vmax) / 8) + 1
        total += blocks_x * blocks_y * 64 * 2
    return total


_MODE_WORDS = {
    "1": "1-bit", "L": "8-bit greyscale", "P": "palette", "RGB": "RGB", "RGBA": "RGBA",
    "CMYK": "CMYK", "I;16": "16-bit greyscale", "I;16B": "16-bit greyscale",
    "I;16L": "16-bit greyscale", "I": "32-bit greyscale", "F": "32-bit float greyscale",
}  # fmt: skip


def budget_reason(img: Image.Image, cost: int, limit: int) -> str:
    width, height = img.size
    kind = _MODE_WORDS.get(img.mode, img.mode)
    return (
        f"decoding this {width}x{height} {kind} {img.format or 'image'} would take about "
        f"{math.ceil(cost / 2**20):,} MB of memory, more than the {limit // 2**20:,} MB one "
        "image may use (FINETUNE_DECODE_IMAGE_MB); not decoded. Save it smaller or as "
        "8-bit RGB"
    )


class DecodeBudget:
    """The memory of every decode in flight in this process, bounded.

    A decode reserves its worst case (:func:`decode_cost`) before it starts and waits,
    first come first served, until that fits; one larger than the whole budget runs
    alone. So how many decoders work at once follows memory (the budget over each
    image's cost), not the number of threads or cores. Never reserve while holding a
    reservation (that can wait forever).
    """

    def __init__(self, total: int) -> None:
        self.total = max(1, int(total))
        self.in_use = 0
        self.peak = 0  # the most bytes reserved at once
        self.most_in_flight = 0  # the most decodes holding a reservation at once
        self._in_flight = 0
        self._queue: deque[object] = deque()
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        need = min(max(0, int(nbytes)), self.total)
        me = object()
        with self._cond:
            self._queue.append(me)
            try:
                while self._queue[0] is not me or (self.in_use and self.in_use + need > self.total):
                    self._cond.wait()
            except BaseException:
                self._queue.remove(me)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self.in_use += need
            self._in_flight += 1
            self.peak = max(self.peak, self.in_use)
            self.most_in_flight = max(self.most_in_flight, self._in_flight)
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= need
                self._in_flight -= 1
                self._cond.notify_all()


_BUDGET: DecodeBudget | None = None
_BUDGET_LOCK = threading.Lock()


def decode_budget() -> DecodeBudget:
    """This process's decode budget: FINETUNE_DECODE_MEMORY_MB, else the smaller of
    1 GiB and a quarter of the memory available to it (at least 256 MiB). Made on first
    use, so a run process's memory limit (set at its start) is taken into account."""
    global _BUDGET
    with _BUDGET_LOCK:
        if _BUDGET is None:
            configured = _env_mb("FINETUNE_DECODE_MEMORY_MB")
            share = max(MIN_DECODE_MEMORY, _memory_available() // 4)
            _BUDGET = DecodeBudget(configured or min(DEFAULT_DECODE_MEMORY, share))
        return _BUDGET


def image_decode_limit() -> int:
    """The most one image may take to decode: FINETUNE_DECODE_IMAGE_MB (default 512),
    never more than the whole process's budget."""
    limit = _env_mb("FINETUNE_DECODE_IMAGE_MB") or DEFAULT_MAX_DECODE_BYTES
    return min(limit, decode_budget().total)


def decoder_threads(cap: int = 8) -> int:
    """Threads for a pool of decoders: the cores this process may use, at most ``cap``.
    How many of them decode at once is up to :func:`decode_budget`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cap, cores))


def _env_mb(name: str) -> int:
    """A positive size in MB from the environment as bytes; 0 when unset or invalid."""
    try:
        value = int(os.environ.get(name, "").strip() or 0)
    except ValueError:
        return 0
    return value * 2**20 if 0 < value < 2**32 else 0


def _memory_available() -> int:
    """Bytes this process may still use: free memory, its cgroup's and its rlimits'."""
    limits = []
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as handle:
            text = handle.read().strip()
        if text.isdigit():
            with open("/sys/fs/cgroup/memory.current") as handle:
                limits.append(int(text) - int(handle.read().strip()))
    except (OSError, ValueError):
        pass
    for which in (resource.RLIMIT_DATA, resource.RLIMIT_AS):
        soft = resource.getrlimit(which)[0]
        if soft != resource.RLIM_INFINITY:
            limits.append(soft)
    return max(0, min(limits)) if limits else 4 * DEFAULT_DECODE_MEMORY
