"""Adversarial input beyond the data engineers' own tests: uploads over the limit, hostile
zips in the CSV-upload path, odd images through decoding and training, hostile dataset
and class names, and fuzzed image bytes.

Each case checks the three promises: a clear message, nothing written outside the
workspace (or the dataset's own folder), nothing half-registered.
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from finetune_core.cli.data import render_report
from finetune_core.config import ConfigError, RunConfig
from finetune_core.data import (
    ImageReadError,
    IngestError,
    IngestLimits,
    UploadedFile,
    ingest,
    load_dataset,
    open_rgb,
    probe_image,
)
from finetune_core.data.cache import decoded_split, resize_center_crop
from finetune_core.data.uploads import stage_csv_upload
from finetune_core.store import MAX_NAME_CHARS, StoreError, Workspace
from finetune_core.training.trainer import Trainer
from tests.helpers.data_files import assert_nothing_registered, image_bytes, make_tree


def tree_snapshot(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            out[path.relative_to(root).as_posix()] = path.lstat().st_size
    return out


def changed_files(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def encode(img: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **save)
    return buffer.getvalue()


# --------------------------------------------------------------------------- 1. uploads
def test_browser_uploads_over_the_total_limit_register_nothing(workspace: Workspace) -> None:
    files = [UploadedFile(f"{i}.jpg", image_bytes(i), "ab"[i % 2]) for i in range(6)]
    total = sum(len(f.data) for f in files)
    with pytest.raises(IngestError, match=r"above the limit; nothing was imported"):
        ingest(workspace, files, name="big", limits=IngestLimits(max_total_bytes=total - 1))
    assert_nothing_registered(workspace)
    assert ingest(workspace, files, name="fits", limits=IngestLimits(max_total_bytes=total))


def _zip(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("a.jpg", image_bytes(1))
        info = zipfile.ZipInfo("b.jpg")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def _crc_damaged_zip() -> bytes:
    data = bytearray(_zip({"a.jpg": image_bytes(1)}, zipfile.ZIP_STORED))
    data[40] ^= 0xFF  # inside a.jpg's stored bytes: the CRC no longer matches
    return bytes(data)


CSV = b"path,label\na.jpg,x\nb.jpg,y\n"
HOSTILE_CSV_UPLOADS = {
    "zip slip": (
        [("imgs.zip", _zip({"../../escaped.jpg": image_bytes(1)}))],
        "rejected for safety",
    ),
    "absolute path": ([("imgs.zip", _zip({"/tmp/escaped.jpg": image_bytes(1)}))], "absolute path"),
    "symlink entry": ([("imgs.zip", _symlink_zip())], "symbolic link"),
    "zip bomb": ([("imgs.zip", _zip({"a.bmp": bytes(8 * 2**20)}))], "zip bomb"),
    "damaged entry": ([("imgs.zip", _crc_damaged_zip())], "is damaged"),
    "not a zip": ([("imgs.zip", b"PK\x03\x04 not really")], "not a valid zip"),
    "loose file slip": ([("../escaped.jpg", image_bytes(2))], "rejected for safety"),
    "loose files over the limit": (
        [(f"{i}.jpg", image_bytes(i)) for i in range(40)],
        "above the limit",
    ),
    "zips over the limit together": (
        [
            (f"{k}.zip", _zip({f"{k}/{i}.jpg": image_bytes(i + 50 * k) for i in range(10)}))
            for k in range(2)
        ],  # fmt: skip
        "above the limit",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_CSV_UPLOADS))
def test_csv_upload_staging_refuses_hostile_zips_and_leaves_nothing(
    workspace: Workspace, case: str
) -> None:
    files, message = HOSTILE_CSV_UPLOADS[case]
    limits = IngestLimits(max_total_bytes=20_000)  # the good cases below stay far under it
    before = tree_snapshot(workspace.root.parent)
    with pytest.raises(IngestError, match=message):
        stage_csv_upload(workspace.tmp_dir, "labels.csv", CSV, files, limits=limits)
    assert list(workspace.tmp_dir.iterdir()) == []
    assert changed_files(before, tree_snapshot(workspace.root.parent)) <= {"ws/workspace.db-wal"}
    assert not Path("/tmp/escaped.jpg").exists()


def test_csv_upload_staging_accepts_the_same_files_when_they_are_sound(
    workspace: Workspace,
) -> None:
    staged = stage_csv_upload(
        workspace.tmp_dir,
        "labels.csv",
        CSV,
        [("imgs.zip", _zip({"a.jpg": image_bytes(1), "b.jpg": image_bytes(2)}))],
        limits=IngestLimits(max_total_bytes=20_000),
    )
    try:
        assert (staged.source.images_root / "a.jpg").read_bytes() == image_bytes(1)
    finally:
        staged.cleanup()
    assert list(workspace.tmp_dir.iterdir()) == []


# --------------------------------------------------------------------------- 2. odd images
def _exif_rotated() -> bytes:
    """64x32 as stored (left half red, right half blue), EXIF orientation 6 (rotate 90 CW)."""
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, :32] = (255, 0, 0)
    arr[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(arr), "JPEG", exif=exif, quality=95)


def _png_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (24, 24), c) for c in ((0, 200, 0), (200, 0, 0), (0, 0, 200))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


ODD_GOOD = {
    "one_pixel.png": lambda: encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
    "wide_20000x20.png": lambda: encode(Image.new("RGB", (20000, 20), (90, 90, 200)), "PNG"),
    "tall_20x20000.png": lambda: encode(Image.new("RGB", (20, 20000), (200, 90, 90)), "PNG"),
    "deep_16bit.png": lambda: encode(Image.fromarray(np.full((24, 24), 40000, np.uint16)), "PNG"),
    "cmyk.jpg": lambda: encode(Image.new("CMYK", (24, 24), (0, 255, 255, 0)), "JPEG"),
    "exif_rotated.jpg": _exif_rotated,
    "animated.gif": _animated_gif,
}
ODD_BAD = {
    "text_posing.jpg": (b"just some notes, not a photo\n" * 20, "not_an_image"),
    "html_posing.png": (b"<html><script>alert(1)</script></html>", "not_an_image"),
    "truncated.jpg": (image_bytes(3, (64, 64))[:900], "truncated"),
    "bomb_9000x9000.png": (_png_claiming(9000, 9000), "decompression_bomb"),
    "empty.jpg": (b"", "empty_file"),
}


@pytest.mark.slow
def test_odd_images_are_imported_decoded_and_trained_on(workspace: Workspace, tmp_path: Path):
    root = make_tree(tmp_path / "odd", {"a": 6, "b": 6})
    for i, (name, make) in enumerate(ODD_GOOD.items()):
        (root / "ab"[i % 2] / name).write_bytes(make())
    for name, (data, _) in ODD_BAD.items():
        (root / "a" / name).write_bytes(data)
    ds = ingest(workspace, root, name="odd").dataset

    by_source = {Path(r.source).name: r for r in ds.all_rows()}
    for name, (_, code) in ODD_BAD.items():
        assert by_source[name].status == code, (name, by_source[name])
        assert by_source[name].reason
    for name in ODD_GOOD:
        assert by_source[name].ok, (name, by_source[name].reason)
    assert (by_source["exif_rotated.jpg"].width, by_source["exif_rotated.jpg"].height) == (32, 64)
    assert ds.record.num_images == 12 + len(ODD_GOOD)

    decoded = {}
    for split in ("train", "val", "test"):
        data = decoded_split(ds, split, 32, workspace.cache_dir)
        assert (
            tuple(data.images.shape[1:]) == (3, 32, 32)
            and data.images.dtype.is_floating_point is False
        )
        decoded.update({p: data.images[i] for i, p in enumerate(data.paths)})
    rotated = decoded[by_source["exif_rotated.jpg"].path].numpy()
    # After orientation the left (red) half is on top: top rows red, bottom rows blue.
    assert rotated[0, 2, 16] > 200 and rotated[2, 2, 16] < 60
    assert rotated[2, 29, 16] > 200 and rotated[0, 29, 16] < 60
    deep = decoded[by_source["deep_16bit.png"].path].numpy()
    assert 150 < deep.mean() < 160  # 40000/65535*255 = 155.6: scaled, not clipped to 255

    config = RunConfig(
        dataset=ds.id, model="resnet18", weights="none", strategy="probe", epochs=1,
        image_size=32, batch_size=8, channels_last=False, mixed_precision="off",
    )  # fmt: skip
    result = Trainer(config, ds, tmp_path / "run", workspace.cache_dir).fit()
    assert result.status == "SUCCEEDED" and result.epochs_run == 1


@pytest.mark.parametrize(("width", "height"), [(60_000, 1), (1, 60_000), (20_000, 20)])
def test_long_thin_images_never_resize_to_gigapixels(
    width: int, height: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 60000x1 PNG is a few hundred bytes and far under the pixel limit, but resizing its
    short side to 224 first would allocate 13 gigapixels (about 40 GB)."""
    image = Image.new("RGB", (width, height), (40, 80, 120))
    largest: list[int] = []
    original = Image.Image.resize

    def spy(self, size, *args, **kwargs):  # records every resize's output size
        largest.append(size[0] * size[1])
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    out = resize_center_crop(image, 224)
    assert out.size == (224, 224)
    assert max(largest) <= 16 * 224 * 224
    assert np.asarray(out)[100, 100].tolist() == [40, 80, 120]


# --------------------------------------------------------------------------- 3. names
ACCEPTED_NAMES = ["../../etc", "<script>alert('x')</script>", "..", "/abs/path", "CON", "名前 ☕"]
REFUSED_NAMES = {
    "nul\x00byte": "control characters",
    "\x1b[31mred": "control characters",
    "bell\x07": "control characters",
    "\u202egpj.exe": "control characters",
    "n" * (MAX_NAME_CHARS + 1): f"at most {MAX_NAME_CHARS} characters",
}


def test_hostile_dataset_names_are_kept_or_refused_clearly(workspace: Workspace) -> None:
    files = [UploadedFile(f"{i}.jpg", image_bytes(i), "ab"[i % 2]) for i in range(4)]
    before = tree_snapshot(workspace.root)
    for name, message in REFUSED_NAMES.items():
        with pytest.raises(IngestError, match=message):
            ingest(workspace, files, name=name)
    assert_nothing_registered(workspace)
    ids = []
    for name in ACCEPTED_NAMES:
        ds = ingest(workspace, files, name=f"  {name}  ").dataset
        assert ds.record.name == name and load_dataset(workspace, name).id == ds.id
        assert ds.root.parent == workspace.datasets_dir and ds.root.name == ds.id
        ids.append(ds.id)
    changed = changed_files(before, tree_snapshot(workspace.root))
    assert all(
        c.startswith(tuple(f"datasets/{i}/" for i in ids)) or c.startswith("workspace.db")
        for c in changed
    ), changed
    target = ids[0]
    for name, message in REFUSED_NAMES.items():
        with pytest.raises(StoreError, match=message):
            workspace.rename_dataset(target, name)
    with pytest.raises(StoreError, match="cannot be empty"):
        workspace.rename_dataset(target, " \t ")
    assert workspace.get_dataset(target).name == ACCEPTED_NAMES[0]
    workspace.rename_dataset(target, "<b>bold</b> & co")
    assert workspace.get_dataset(target).name == "<b>bold</b> & co"


def test_hostile_run_names_are_refused_on_rename(workspace: Workspace) -> None:
    from finetune_core.store import RunRecord

    workspace.add_run(RunRecord(id="r-1", name="first"))
    for name, message in REFUSED_NAMES.items():
        with pytest.raises(StoreError, match=message):
            workspace.rename_run("r-1", name)
    workspace.rename_run("r-1", "<img src=x onerror=alert(1)>")
    assert workspace.get_run("r-1").name == "<img src=x onerror=alert(1)>"


def test_hostile_class_names_stay_inside_and_survive_case_insensitive_disks(
    workspace: Workspace, tmp_path: Path
) -> None:
    """Case-only duplicates ("Cat"/"cat", "IMG.JPG"/"img.jpg") must not collide on a
    case-insensitive disk (macOS, Windows): stored names are unique even ignoring case."""
    long_4byte = "\U0001d400" * 300  # MATHEMATICAL BOLD CAPITAL A: alphanumeric, 4 bytes in UTF-8
    labels = ["Cat", "cat", "CAT", "\x1b[2J\x1b[Hwipe", long_4byte, "../../escape", "a\\b\\..\\c"]
    files = []
    for k, label in enumerate(labels):
        for i, stem in enumerate(["IMG", "img", "Img"]):
            files.append(
                UploadedFile(f"{stem}.JPG" if i else f"{stem}.jpg", image_bytes(10 * k + i), label)
            )
    files.append(UploadedFile("x" * 400 + ".jpg", image_bytes(999), "cat"))
    before = tree_snapshot(workspace.root.parent)
    result = ingest(workspace, files, name="hostile classes")
    ds = result.dataset
    kept = sorted(set(labels) - {"../../escape"})
    assert ds.class_names == kept
    # A label starting with "." reads as a hidden folder: its files are reported, not imported.
    ignored = result.health.find("ignored_entry")
    assert sorted(ignored.files) == sorted(f"../../escape/{f.name}" for f in files[15:18])
    again = load_dataset(workspace, ds.id)
    assert again.class_names == kept and len(again.rows()) == len(files) - 3

    stored = [r.path for r in ds.all_rows()]
    assert len({p.casefold() for p in stored}) == len(stored)
    assert len({p.split("/")[0].casefold() for p in stored}) == len(kept)
    for path in stored:
        full = ds.image_path(next(r for r in ds.all_rows() if r.path == path)).resolve()
        assert full.is_relative_to(ds.images_dir.resolve()) and full.is_file()
        assert all(len(part.encode()) <= 255 for part in path.split("/"))
    changed = changed_files(before, tree_snapshot(workspace.root.parent))
    assert all(
        c.startswith(f"ws/datasets/{ds.id}/") or c.startswith("ws/workspace.db") for c in changed
    )
    text = render_report(ds)  # the CLI's table: escapes, never raw control characters
    assert "\x1b" not in text and "\\x1b[2J" in text


# --------------------------------------------------------------------------- 5. fuzzing
SEEDS = [
    encode(Image.new("RGB", (9, 7), (1, 2, 3)), fmt)
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
] + [_exif_rotated(), _animated_gif()]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about damaged TIFF tags
@settings(
    max_examples=int(os.environ.get("ADVERSARIAL_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.sampled_from(SEEDS),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
    junk=st.binary(max_size=64),
)
def test_mutated_image_bytes_only_ever_raise_image_read_error(
    seed: bytes, flips: list[tuple[int, int]], cut: int | None, junk: bytes
) -> None:
    data = bytearray(seed)
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    data += junk
    with tempfile.NamedTemporaryFile(suffix=".img") as handle:
        handle.write(bytes(data))
        handle.flush()
        try:
            probe_image(handle.name)
        except ImageReadError as exc:
            assert exc.code and exc.reason
            probed = False
        else:
            probed = True
    try:
        image = open_rgb(bytes(data))
    except ImageReadError as exc:
        # ingest marks what the probe accepts as usable: decoding it later must work too
        assert not probed, f"probe accepted what decoding refuses: {exc.reason}"
        assert exc.code and exc.reason
    else:
        assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
        assert resize_center_crop(image, 16).size == (16, 16)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(max_size=250))
def test_random_dataset_names_are_registered_exactly_or_refused(name: str) -> None:
    files = [UploadedFile(f"{i}.png", SEEDS[1], "ab"[i % 2]) for i in range(2)]
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        before = tree_snapshot(Path(tmp))
        try:
            ds = ingest(ws, files, name=name).dataset
        except IngestError as exc:
            assert str(exc) and "unexpectedly" not in str(exc)
            assert ws.list_datasets() == [] and list(ws.datasets_dir.iterdir()) == []
            allowed = "ws/workspace.db"
        else:
            assert ds.record.name == name.strip() and ws.get_dataset(ds.id).name == name.strip()
            allowed = f"ws/datasets/{ds.id}/"
        changed = changed_files(before, tree_snapshot(Path(tmp)))
        assert all(c.startswith((allowed, "ws/workspace.db")) for c in changed), changed


# ------------------------------------------------------------------ config values (issue 15.1)
def cli_train(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m finetune_core train`` on a dataset that does not exist: a config
    problem is found before the dataset is looked up."""
    return subprocess.run(
        [sys.executable, "-m", "finetune_core", "--workspace", str(workspace), "train",
         "--data", "no-such-dataset", "--out", str(workspace.parent / "out"), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


SETTINGS = [
    ("num_threads=100000", "num_threads must be between 0 and 1024 (got 100000)"),
    ("num_threads=1000000", "num_threads must be between 0 and 1024 (got 1000000)"),
    ("lr=nan", "lr must be a finite number (got 'nan')"),
    ("lr=Infinity", "lr must be a finite number (got 'Infinity')"),
    ("momentum=-inf", "momentum must be a finite number (got '-inf')"),
    ("seed=1180591620717411303424", "seed must be between 0 and 2147483647"),
    ("seed=-5", "seed must be between 0 and 2147483647 (got -5)"),
    ("image_size=100000", "image_size must be between 16 and 1024 (got 100000)"),
    ("es_min_delta=-1", "es_min_delta must be between 0 and 10 (got -1.0)"),
]
FILES = [
    ('{"lr": NaN}', "lr must be a finite number (got nan)"),
    ('{"epochs": Infinity}', "epochs must be a finite number (got inf)"),
    ('{"num_threads": 100000}', "num_threads must be between 0 and 1024 (got 100000)"),
    ('{"seed": ' + "9" * 5000 + "}", "The config holds a number too long to read."),
    ("[" * 100_000, "The config is nested too deeply to read."),
    ("{nope", "The config is not valid JSON"),
]


@pytest.mark.parametrize(("setting", "reason"), SETTINGS)
def test_set_values_out_of_range_are_refused_naming_the_field(setting: str, reason: str) -> None:
    key, value = setting.split("=")
    with pytest.raises(ConfigError) as caught:  # what the CLI's --set does
        RunConfig(dataset="d").replace(**{key: value}).validate()
    assert f"- {reason}" in str(caught.value).splitlines()[-1]


@pytest.mark.parametrize(("text", "reason"), FILES)
def test_hostile_config_files_are_refused_with_a_reason(
    tmp_path: Path, text: str, reason: str
) -> None:
    config = tmp_path / "run.json"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        RunConfig.load(config).validate()
    assert reason in str(caught.value)


def test_the_cli_prints_one_line_reasons_never_a_traceback(tmp_path: Path) -> None:
    # Real processes (each one starts torch: a few of the cases above, not all of them).
    for setting, reason in (SETTINGS[1], SETTINGS[3], SETTINGS[5]):
        proc = cli_train(tmp_path / "ws", "--set", setting)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert f"- {reason}" in proc.stderr.splitlines()[-1], proc.stderr
    for i, (text, reason) in enumerate((FILES[0], FILES[4])):
        config = tmp_path / f"run{i}.json"
        config.write_text(text, encoding="utf-8")
        proc = cli_train(tmp_path / "ws", "--config", str(config))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert reason in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_config_at_every_limit_is_accepted_and_round_trips(tmp_path: Path) -> None:
    # The other side of the ranges: the largest allowed values are runs, not errors.
    at_limits = {"epochs": 10_000, "num_threads": 1024, "seed": 2**31 - 1, "lr": 10.0,
                 "momentum": 0.999, "image_size": 1024, "batch_size": 2048, "probe_views": 32}  # fmt: skip
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"dataset": "d", **at_limits}), encoding="utf-8")
    cfg = RunConfig.load(path).validate()
    assert {k: getattr(cfg, k) for k in at_limits} == at_limits
