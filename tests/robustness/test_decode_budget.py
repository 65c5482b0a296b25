"""Issue 15 item 6: small images that decode into huge buffers, and the class behind them.

v1 checked pixels only (64 MP) and converted 16-bit and float greyscale through whole-
image int64/float64 copies: a 0.14 MB 16-bit PNG of 8000x8000 peaked at 1.3 GB, a
0.38 MB float TIFF at 1.8 GB, and ingest probed (and training decoded) as many at once
as the machine had cores. The rule now (finetune_core/data/decode_budget.py):
``decode_cost`` counts bytes a pixel by mode and format before decoding, and bounds
the measured peak of every mode; an image over FINETUNE_DECODE_IMAGE_MB is drafted
(JPEG) or refused with the reason on its row; and every decode in flight in a process
reserves its cost from one DecodeBudget (FINETUNE_DECODE_MEMORY_MB), so how many
decode at once follows memory, not threads or cores.

Peaks are measured in child processes (VmHWM, reset through /proc/self/clear_refs
right before the work; large allocations forced to mmap so freed memory leaves).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune_core.data import ImageReadError, ingest, open_rgb, probe_image, to_rgb
from finetune_core.data.decode_budget import STRIP_PIXELS, DecodeBudget
from finetune_core.data.images import decode_estimate
from finetune_core.data.manifest import read_manifest
from finetune_core.data.preprocess import preprocess_for_inference
from finetune_core.store import Workspace
from tests.helpers.data_files import image_bytes

MB = 10**6
MiB = 2**20
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="peak memory is read from Linux /proc"
)

# The child: run one action, print the peak growth of resident memory it caused.
CHILD = r"""
import json, sys
spec = json.loads(sys.argv[1])
from finetune_core.data import images, pipeline, ingest, load_dataset
from finetune_core.data.preprocess import preprocess_for_inference
from finetune_core.data.decode_budget import decode_budget
from finetune_core.store import Workspace
if "cache" in spec["actions"]:  # torch: seconds to import, only where it is needed
    from finetune_core.data import cache

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

if spec.get("threads"):  # a machine with that many cores
    pipeline.decoder_threads = lambda cap=8: spec["threads"]
    if "cache" in spec["actions"]:
        cache.decoder_threads = lambda cap=8: spec["threads"]
out = {}
for action in spec["actions"]:
    open("/proc/self/clear_refs", "w").write("5")
    base = status("VmRSS")
    try:
        if action == "probe":
            images.probe_image(spec["path"])
        elif action == "prep":
            preprocess_for_inference(spec["path"], 224)
        elif action == "ingest":
            ingest(Workspace(spec["ws"]), spec["path"], name="d")
        elif action == "cache":
            ws = Workspace(spec["ws"])
            ds = load_dataset(ws, "d")
            cache.decoded_split(ds, "train", 32, ws.cache_dir)
        result = "ok"
    except Exception as exc:
        result = f"{type(exc).__name__}: {exc}"
    budget = decode_budget()
    out[action] = {"growth": status("VmHWM") - base, "result": result,
                   "in_flight": budget.most_in_flight, "reserved": budget.peak}
    budget.most_in_flight = budget.peak = 0
print(json.dumps(out))
"""


def measure(actions: list[str], env: dict[str, str] | None = None, **spec: object) -> dict:
    """Run ``actions`` in a fresh process; each gives its peak RSS growth in bytes."""
    child_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", **(env or {})}
    for key in ("FINETUNE_DECODE_IMAGE_MB", "FINETUNE_DECODE_MEMORY_MB"):
        if key not in (env or {}):
            child_env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps({"actions": actions, **spec})],
        capture_output=True, text=True, cwd=ROOT, env=child_env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------- image makers
def save(img: Image.Image, path: Path, **params: object) -> Path:
    img.save(path, **params)
    return path


def grey16(size: int) -> Image.Image:
    return Image.fromarray(np.full((size, size), 1234, np.uint16))


def float_grey(size: int, value: float = 0.5) -> Image.Image:
    return Image.fromarray(np.full((size, size), value, np.float32), "F")


def rotated_jpeg(size: int) -> dict:
    exif = Image.Exif()
    exif[0x0112] = 6
    return {"exif": exif.tobytes(), "quality": 90}


def frames(size: int, mode: str = "RGB") -> dict:
    more = [Image.new(mode, (size, size), (i * 60, 0, 0)).convert(mode) for i in (1, 2)]
    return {"save_all": True, "append_images": more}


DEFLATE = {"compression": "tiff_adobe_deflate"}
S = 3000  # 9 MP: every mode's buffers stand well above the interpreter's noise
CASES = {
    "L png": (lambda: Image.new("L", (S, S), 90), "png", {}),
    "P gif": (lambda: Image.new("P", (S, S), 3), "gif", {}),
    "RGB png": (lambda: Image.new("RGB", (S, S), (1, 2, 3)), "png", {}),
    "RGB bmp": (lambda: Image.new("RGB", (S, S), (1, 2, 3)), "bmp", {}),
    "RGBA png": (lambda: Image.new("RGBA", (S, S), (1, 2, 3, 100)), "png", {}),
    "LA png": (lambda: Image.new("LA", (S, S), (1, 100)), "png", {}),
    "P png, transparency": (lambda: Image.new("P", (S, S), 0), "png", {"transparency": 0}),
    "I;16 png": (lambda: grey16(S), "png", {}),
    "I tiff": (lambda: Image.new("I", (S, S), 70000), "tif", DEFLATE),
    "F tiff": (lambda: float_grey(S), "tif", DEFLATE),
    "F tiff, one strip": (lambda: float_grey(S), "tif", {**DEFLATE, "strip_size": 2**31 - 1}),
    "CMYK tiff": (lambda: Image.new("CMYK", (S, S), (1, 2, 3, 4)), "tif", DEFLATE),
    "CMYK jpeg": (lambda: Image.new("CMYK", (S, S), (1, 2, 3, 4)), "jpg", {}),
    "RGB jpeg": (lambda: Image.new("RGB", (S, S), (9, 99, 199)), "jpg", {}),
    "RGB jpeg, EXIF rotated": (lambda: Image.new("RGB", (S, S), (9, 9, 9)), "jpg",
                               rotated_jpeg(S)),
    "RGB jpeg, progressive": (lambda: Image.new("RGB", (S, S), (9, 99, 199)), "jpg",
                              {"progressive": True, "subsampling": 0}),
    "L jpeg, progressive": (lambda: Image.new("L", (S, S), 99), "jpg", {"progressive": True}),
    "WebP lossless": (lambda: Image.new("RGB", (S, S), (9, 99, 199)), "webp", {"lossless": True}),
    "WebP RGBA": (lambda: Image.new("RGBA", (S, S), (9, 99, 199, 50)), "webp", {}),
    "AVIF": (lambda: Image.new("RGB", (S, S), (9, 99, 199)), "avif", {}),
    "GIF, 3 frames": (lambda: Image.new("P", (S, S), 1), "gif", frames(S, "P")),
    "APNG, 3 frames": (lambda: Image.new("RGB", (S, S), (1, 2, 3)), "png", frames(S)),
    "TIFF, 3 pages": (lambda: Image.new("RGB", (S, S), (1, 2, 3)), "tif",
                      {**DEFLATE, **frames(S)}),
    "WebP, 3 frames": (lambda: Image.new("RGB", (S, S), (1, 2, 3)), "webp",
                       {"lossless": True, **frames(S)}),
}  # fmt: skip


# ------------------------------------------------------------------ the reproduction
@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, v1_peak_mb",
    [("16-bit PNG", 1283), ("float TIFF", 1773)],  # v1's growth, measured on this machine
)
def test_v1_small_images_decode_within_their_budget(
    tmp_path: Path, kind: str, v1_peak_mb: int
) -> None:
    if kind == "16-bit PNG":
        path = save(grey16(8000), tmp_path / "tiny.png")
    else:
        path = save(float_grey(8000), tmp_path / "tiny.tif", **DEFLATE)
    assert path.stat().st_size < 0.5 * MB  # the attack: a tiny file of 64 megapixels
    peaks = measure(["probe", "prep"], path=str(path))
    cost = decode_estimate(path)
    for action, got in peaks.items():
        print(f"{kind} 8000x8000 ({path.stat().st_size / MB:.2f} MB) {action}: peak growth "
              f"{got['growth'] / MB:.0f} MB (v1 {v1_peak_mb} MB), reserved {cost / MB:.0f} MB")  # fmt: skip
        assert got["result"] == "ok"
        assert got["growth"] <= cost  # the budget's count holds
        assert got["growth"] < 400 * MB  # v1: 1.3 GB / 1.8 GB


# ------------------------------------------------------------------------ the class
@pytest.mark.parametrize("case", list(CASES))
def test_the_decode_cost_bounds_the_measured_peak_of_every_mode(tmp_path: Path, case: str):
    """For every mode and format (multi-frame files included), what the budget counts
    before decoding is at least what the decode then takes, and not wildly more."""
    make, ext, params = CASES[case]
    path = save(make(), tmp_path / f"image.{ext}", **params)
    peaks = measure(["probe", "prep"], path=str(path))
    costs = {"probe": decode_estimate(path, probe=True), "prep": decode_estimate(path)}
    for action, got in peaks.items():
        growth, cost = got["growth"], costs[action]
        print(f"{case} {S}x{S} {action}: measured {growth / MB:.1f} MB, counted {cost / MB:.1f} MB")
        assert got["result"] == "ok"
        assert growth <= cost, (case, action, growth, cost)
        assert cost <= 2 * growth + 40 * MB, (case, action, growth, cost)  # not a blanket


def test_an_image_over_the_limit_is_refused_before_decoding_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2.5 kB of WebP, 8000x8000: libwebp's canvases take ~1 GB (v1 decoded it).
    webp = save(Image.new("RGB", (8000, 8000), (9, 99, 199)), tmp_path / "w.webp", lossless=True)
    rgba = save(Image.new("RGBA", (4000, 4000), (1, 2, 3, 4)), tmp_path / "a.png")
    assert webp.stat().st_size < 10_000
    for path, limit, words in [(webp, None, "8000x8000 RGB WEBP"), (rgba, 64 * MiB, "RGBA PNG")]:
        for call in (probe_image, open_rgb):
            start = time.perf_counter()
            with pytest.raises(ImageReadError) as err:
                call(path, max_bytes=limit)
            assert time.perf_counter() - start < 0.5  # refused from the header alone
            assert err.value.code == "decompression_bomb"
            assert words in err.value.reason and "MB of memory" in err.value.reason
            assert "FINETUNE_DECODE_IMAGE_MB" in err.value.reason
            assert str(tmp_path) not in err.value.reason  # no server paths
    monkeypatch.setenv("FINETUNE_DECODE_IMAGE_MB", "64")  # the setting is read per call
    with pytest.raises(ImageReadError, match="more than the 64 MB one image may use"):
        preprocess_for_inference(rgba, 32)
    monkeypatch.setenv("FINETUNE_DECODE_IMAGE_MB", "140")  # it needs 128 MB
    assert preprocess_for_inference(rgba, 32).shape == (3, 32, 32)


def test_a_jpeg_over_the_limit_is_drafted_not_refused(tmp_path: Path) -> None:
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (4000, 4000, 3), np.uint8))
    path = save(photo.resize((4000, 4000)), tmp_path / "big.jpg", quality=80)
    assert open_rgb(path).size == (4000, 4000)  # 64 MB: within the default limit
    limit = 24 * MiB  # full size needs 64 MB + slack, a half 16 MB
    assert decode_estimate(path, max_bytes=limit) <= limit
    small = open_rgb(path, max_bytes=limit)
    assert small.size == (2000, 2000) and small.mode == "RGB"
    assert probe_image(path, max_bytes=limit).width == 4000  # the probe reports the file


def test_refused_images_are_rows_with_their_reason_and_leave_no_file(
    workspace: Workspace, tmp_path: Path
) -> None:
    bomb = io.BytesIO()
    Image.new("RGB", (8000, 8000), (9, 99, 199)).save(bomb, "WEBP", lossless=True)
    entries = {f"{'ab'[i % 2]}/ok_{i}.png": image_bytes(i) for i in range(6)}
    entries["a/huge.webp"] = bomb.getvalue()
    path = tmp_path / "upload.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    result = ingest(workspace, path, name="d")
    rows = read_manifest(result.dataset.root / "manifest.csv")
    bad = [r for r in rows if r.source == "a/huge.webp"]
    assert len(bad) == 1 and bad[0].status == "decompression_bomb" and bad[0].path == ""
    assert "8000x8000 RGB WEBP would take about" in bad[0].reason
    assert sum(r.ok for r in rows) == 6
    assert not [p for p in (result.dataset.root / "images").rglob("*.webp")]
    finding = result.health.find("decompression_bomb")
    assert finding is not None and finding.files == ["a/huge.webp"]


def test_wide_greyscale_and_alpha_in_strips_equal_v1_pixels() -> None:
    """The strip-wise conversions give v1's whole-image pixels exactly, including the
    scale decided by the whole image (one value above 1 in the last strip)."""

    def v1(arr: np.ndarray, mode: str) -> np.ndarray:
        if mode == "F":
            arr = np.nan_to_num(arr.astype(np.float64))
            if arr.max() <= 1.0 and arr.min() >= 0.0:
                arr = arr * 255.0
            return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        wide = arr.astype(np.int64)
        if mode == "I" and wide.max() <= 255:
            return np.clip(wide, 0, 255).astype(np.uint8)
        return ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)

    rng = np.random.default_rng(1)
    shape = (3 * STRIP_PIXELS // 1000 + 7, 1000)  # four strips
    unit = rng.random(shape, dtype=np.float32)
    unit[5, 5], unit[-1, -1] = np.nan, 0.75
    wide_f = unit * 300 - 20
    wide_f[-1, -2], wide_f[0, 1] = np.inf, -np.inf
    narrow_i = rng.integers(0, 256, shape).astype(np.int32)
    arrays = {
        "F unit": (unit, "F"),
        "F wide": (wide_f, "F"),
        "I narrow": (narrow_i, "I"),
        "I wide": (rng.integers(-5, 90000, shape).astype(np.int32), "I"),
        "I;16": (rng.integers(0, 65536, shape).astype(np.uint16), "I;16"),
    }
    for name, (arr, mode) in arrays.items():
        img = Image.fromarray(arr, mode) if mode != "I;16" else Image.fromarray(arr)
        got = np.asarray(to_rgb(img))
        assert (got[..., 0] == v1(arr, mode)).all(), name
        assert (got[..., 0] == got[..., 2]).all()
    unit[-1, -1] = 1.5  # one value out of [0, 1] anywhere: no scaling for the whole image
    assert np.asarray(to_rgb(Image.fromarray(unit, "F")))[0, 0, 0] == v1(unit, "F")[0, 0]

    rgba = rng.integers(0, 256, (*shape, 4), dtype=np.uint8)
    img = Image.fromarray(rgba, "RGBA")
    background = Image.new("RGB", img.size, (255, 255, 255))
    background.paste(img, mask=img.getchannel("A"))  # v1: one paste of the whole image
    assert (np.asarray(to_rgb(img)) == np.asarray(background)).all()


# --------------------------------------------------------------- decoders in flight
def test_the_budget_admits_decodes_by_bytes_first_come_first_served() -> None:
    budget = DecodeBudget(100)

    def work(nbytes: int, seconds: float, order: list[int], tag: int) -> None:
        with budget.reserve(nbytes):
            order.append(tag)
            time.sleep(seconds)

    order: list[int] = []
    threads = [threading.Thread(target=work, args=(40, 0.05, order, i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(order) == list(range(8))
    assert budget.most_in_flight == 2 and budget.peak == 80 and budget.in_use == 0

    # One larger than the whole budget runs alone; a big one is not starved by small ones.
    budget = DecodeBudget(100)
    order = []
    first = threading.Thread(target=work, args=(60, 0.3, order, 1))
    first.start()
    time.sleep(0.05)
    big = threading.Thread(target=work, args=(500, 0.05, order, 2))
    big.start()
    time.sleep(0.05)
    small = threading.Thread(target=work, args=(10, 0.0, order, 3))  # would fit now
    small.start()
    for t in (first, big, small):
        t.join(10)
    assert order == [1, 2, 3] and budget.peak == 100 and budget.in_use == 0


def test_a_waiter_that_is_interrupted_leaves_no_hole_in_the_queue() -> None:
    budget = DecodeBudget(100)
    real_wait = budget._cond.wait
    victim: list[threading.Thread] = []

    def wait(timeout: float | None = None) -> bool:
        if threading.current_thread() in victim:
            raise KeyboardInterrupt  # a stop arriving while it waits
        return real_wait(timeout)

    budget._cond.wait = wait  # type: ignore[method-assign]
    errors: list[BaseException] = []
    done: list[str] = []

    def interrupted() -> None:
        try:
            with budget.reserve(80):
                done.append("victim")
        except BaseException as exc:  # noqa: BLE001 - the injected interrupt
            errors.append(exc)

    def later() -> None:
        with budget.reserve(80):
            done.append("later")

    with budget.reserve(50):
        victim.append(threading.Thread(target=interrupted))
        victim[0].start()
        victim[0].join(5)
        follower = threading.Thread(target=later)
        follower.start()
        time.sleep(0.05)
    follower.join(5)
    assert [type(e) for e in errors] == [KeyboardInterrupt]
    assert done == ["later"] and budget.in_use == 0


def _tiff_zip(tmp_path: Path, count: int) -> Path:
    tiff = io.BytesIO()
    float_grey(8000).save(tiff, "TIFF", **DEFLATE)
    path = tmp_path / "tiffs.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(count):
            zf.writestr(f"{'ab'[i % 2]}/t{i}.tif", tiff.getvalue())
    return path


@pytest.mark.slow
def test_eight_tiffs_in_a_small_zip_stay_within_the_process_budget(tmp_path: Path) -> None:
    """The issue's zip (eight 0.38 MB float TIFFs of 8000x8000, 3 MB) imported and then
    decoded for training with 8 decoder threads: what is in flight follows the budget."""
    path = _tiff_zip(tmp_path, 8)
    assert path.stat().st_size < 3 * MB  # deflate squeezes the TIFFs further: ~0.07 MB
    ws = tmp_path / "ws"
    Workspace(ws)
    cost = decode_estimate(save(float_grey(8000), tmp_path / "one.tif", **DEFLATE))
    budget_mb = 700  # two of them at once (one costs ~326 MB)
    got = measure(["ingest", "cache"], env={"FINETUNE_DECODE_MEMORY_MB": str(budget_mb)},
                  path=str(path), ws=str(ws), threads=8)  # fmt: skip
    for action, stats in got.items():
        print(f"8 float TIFFs (3 MB zip), 8 threads, budget {budget_mb} MB, {action}: peak "
              f"growth {stats['growth'] / MB:.0f} MB, {stats['in_flight']} decoding at once, "
              f"{stats['reserved'] / MB:.0f} MB reserved at most (v1: 3.6 GB ingest, 4.15 GB "
              "training on 2 cores)")  # fmt: skip
        assert stats["result"] == "ok"
        assert stats["in_flight"] == budget_mb * MiB // cost == 2
        assert stats["reserved"] <= budget_mb * MiB
        assert stats["growth"] < budget_mb * MiB + 150 * MB  # + the pools, the copies, torch
