"""The dashboard's non-widget helpers: formatting, selection parsing, galleries, comparisons,
CSV uploads, batch prediction and presets. Real files, real datasets, no Streamlit session."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune_core.config import RunConfig
from finetune_core.data import IngestError, create_demo_dataset, ingest
from finetune_core.data.uploads import (
    choose_images_root,
    csv_paths,
    save_weights_upload,
    stage_csv_upload,
)
from finetune_core.evaluation.predict import iter_images, predictions_csv, top_k
from finetune_core.presets import PRESETS, apply_preset, demo_config, preset_of
from finetune_core.reporting.compare import config_diff, headline_metrics, metrics_table
from finetune_core.reporting.gallery import (
    augmentation_preview,
    cell_predictions,
    class_rows,
    finding_files,
    preview_rows,
    thumbnail_bytes,
    true_class_probability,
)
from finetune_core.store import Workspace
from ui.components import cell_from_selection, esc, fmt_duration, fmt_pct


def png(color: tuple[int, int, int], size: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, "PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------- formatting
def test_esc_shows_markdown_characters_literally() -> None:
    assert esc("**bold** [link](x) `code`") == r"\*\*bold\*\* \[link\]\(x\) \`code\`"
    assert esc("two\nlines") == "two lines"
    assert esc("<b>x</b>") == r"\<b\>x\</b\>"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "–"), (5, "5s"), (65, "1m 05s"), (3600 * 2 + 60 * 3, "2h 03m"), (-1, "–")],
)
def test_fmt_duration(seconds: float | None, text: str) -> None:
    assert fmt_duration(seconds) == text


def test_fmt_pct() -> None:
    assert fmt_pct(0.9166) == "91.7%"
    assert fmt_pct(None) == "–"


def test_cell_from_selection_reads_the_clicked_cell() -> None:
    state = {"selection": {"points": [{"x": 1, "y": 2, "customdata": [2, 1]}]}}
    assert cell_from_selection(state) == (2, 1)
    assert cell_from_selection({"selection": {"points": []}}) is None
    assert cell_from_selection(None) is None
    assert cell_from_selection({"selection": {"points": [{"x": 0}]}}) is None


# ----------------------------------------------------------------------- galleries
def test_cell_predictions_filters_and_orders_by_confidence() -> None:
    rows = [
        {
            "split": "test",
            "true": "a",
            "pred": "b",
            "prob_pred": 0.6,
            "probs": np.array([0.4, 0.6]),
        },
        {
            "split": "test",
            "true": "a",
            "pred": "b",
            "prob_pred": 0.9,
            "probs": np.array([0.1, 0.9]),
        },
        {"split": "val", "true": "a", "pred": "b", "prob_pred": 0.99},
        {"split": "test", "true": "a", "pred": "a", "prob_pred": 0.7},
    ]
    cell = cell_predictions(rows, "test", "a", "b")
    assert [r["prob_pred"] for r in cell] == [0.9, 0.6]
    assert true_class_probability(cell[0], ["a", "b"]) == pytest.approx(0.1)
    assert cell_predictions(rows, "test", "b", "a") == []


def test_finding_files_match_dataset_copies_and_flag_unusable_files(
    workspace: Workspace, tmp_path: Path
) -> None:
    src = tmp_path / "photos"
    for label, color in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
        (src / label).mkdir(parents=True)
        for i in range(6):
            (src / label / f"{label}{i}.png").write_bytes(png((color[0], i * 20, color[2])))
    (src / "red" / "copy.png").write_bytes((src / "red" / "red0.png").read_bytes())
    (src / "blue" / "broken.png").write_bytes(b"not a png at all")
    result = ingest(workspace, src, name="photos")
    dataset = result.dataset
    duplicates = result.health.find("duplicate_in_class")
    files = finding_files(dataset, duplicates)
    assert sorted(Path(f.source).name for f in files) == ["copy.png", "red0.png"]
    assert all(f.usable and f.path is not None and f.path.is_file() for f in files)
    assert all(f.label == "red" for f in files)
    broken = next(f for f in result.health.findings if f.files and "blue/broken.png" in f.files)
    [entry] = finding_files(dataset, broken)
    assert not entry.usable and entry.reason
    assert thumbnail_bytes(dataset.images_dir / "missing.png") is None
    thumb = thumbnail_bytes(files[0].path, size=16)
    assert Image.open(io.BytesIO(thumb)).size == (16, 16)
    assert len(class_rows(dataset, "blue")) == 6


def test_augmentation_preview_gives_original_and_views(workspace: Workspace) -> None:
    dataset = create_demo_dataset(workspace, per_class=6, size=32)
    rows = preview_rows(dataset, per_class=1, limit=3)
    assert [r.label for r in rows] == dataset.class_names
    grid = augmentation_preview([dataset.image_path(r) for r in rows], "strong", 48, views=3)
    assert len(grid) == 3 and all(len(row) == 4 for row in grid)
    assert all(image.size == (48, 48) for row in grid for image in row)
    assert np.asarray(grid[0][1]).tolist() != np.asarray(grid[0][0]).tolist()


# ----------------------------------------------------------------------- comparison
def test_config_diff_lists_only_differing_settings() -> None:
    a = RunConfig(dataset="d", name="first", lr=1e-3).to_dict()
    b = RunConfig(dataset="d", name="second", lr=3e-4, epochs=9).to_dict()
    rows = config_diff({"A": a, "B": b})
    assert rows == [
        {"setting": "epochs", "A": "5", "B": "9"},
        {"setting": "lr", "A": "0.001", "B": "0.0003"},
    ]
    assert config_diff({"A": a, "B": a}) == []


def test_metrics_table_has_one_column_per_run() -> None:
    split = {
        "accuracy": 0.75, "balanced_accuracy": 0.7, "macro": {"f1": 0.72}, "macro_auc": 0.8,
        "log_loss": 0.5, "calibration": {"ece": 0.1}, "n": 12,
    }  # fmt: skip
    assert headline_metrics(split)["macro_f1"] == 0.72
    table = metrics_table({"A": {"splits": {"test": split}}, "B": None}, "test")
    accuracy = next(r for r in table if r["metric"] == "Accuracy")
    assert accuracy == {"metric": "Accuracy", "A": 0.75, "B": None}
    assert next(r for r in table if r["metric"] == "Images")["A"] == 12


# ----------------------------------------------------------------------- uploads
def test_stage_csv_upload_finds_the_images_folder_of_a_folder_upload(
    workspace: Workspace,
) -> None:
    csv_text = "path,label\ncats/a.png,cat\ncats/b.png,cat\ndogs/c.png,dog\ndogs/d.png,dog\n"
    files = [
        ("pets/cats/a.png", png((250, 0, 0))),
        ("pets/cats/b.png", png((240, 10, 0))),
        ("pets/dogs/c.png", png((0, 0, 250))),
        ("pets/dogs/d.png", png((0, 10, 240))),
    ]
    staged = stage_csv_upload(workspace.tmp_dir, "labels.csv", csv_text.encode(), files)
    try:
        assert Path(staged.source.images_root).name == "pets"
        result = ingest(workspace, staged.source, name="pets")
        assert result.dataset.class_names == ["cat", "dog"]
        assert result.dataset.record.num_images == 4
    finally:
        staged.cleanup()
    assert not staged.folder.exists()


def test_stage_csv_upload_reads_a_zip_and_rejects_escaping_names(workspace: Workspace) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("a.png", png((255, 0, 0)))
        zf.writestr("b.png", png((0, 0, 255)))
    csv_data = b"file,class\na.png,red\nb.png,blue\n"
    staged = stage_csv_upload(
        workspace.tmp_dir, "x.csv", csv_data, [("imgs.zip", buffer.getvalue())]
    )
    try:
        assert (Path(staged.source.images_root) / "a.png").is_file()
    finally:
        staged.cleanup()
    with pytest.raises(IngestError, match="outside"):
        stage_csv_upload(workspace.tmp_dir, "x.csv", csv_data, [("../evil.png", png((0, 0, 0)))])
    assert not list(workspace.tmp_dir.glob("csv-upload-*"))
    with pytest.raises(IngestError, match="empty"):
        stage_csv_upload(workspace.tmp_dir, "x.csv", b"  ", [("a.png", png((0, 0, 0)))])


def test_csv_paths_and_images_root_choice(tmp_path: Path) -> None:
    assert csv_paths(b"image;label\nx/1.png;a\n") == ["x/1.png"]
    assert csv_paths(b"name,label\n1.png,a\n") == []
    (tmp_path / "top" / "x").mkdir(parents=True)
    (tmp_path / "top" / "x" / "1.png").write_bytes(b"1")
    chosen = choose_images_root(tmp_path, [("top", "x", "1.png")], ["x/1.png"])
    assert chosen == tmp_path / "top"
    assert choose_images_root(tmp_path, [("top", "x", "1.png")], ["top/x/1.png"]) == tmp_path


def test_save_weights_upload_chooses_a_safe_name(tmp_path: Path) -> None:
    path = save_weights_upload(tmp_path, "../../my weights!.pth", b"data", (".pt", ".pth"))
    assert path.parent == tmp_path and path.suffix == ".pth" and path.read_bytes() == b"data"
    assert "/" not in path.name and " " not in path.name
    with pytest.raises(ValueError, match="not a"):
        save_weights_upload(tmp_path, "model.exe", b"data", (".pt",))
    with pytest.raises(ValueError, match="empty"):
        save_weights_upload(tmp_path, "model.pt", b"", (".pt",))


# ----------------------------------------------------------------------- prediction helpers
def test_iter_images_walks_zips_and_skips_clutter() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("set/a.png", png((1, 2, 3)))
        zf.writestr("__MACOSX/set/._a.png", b"junk")
        zf.writestr("set/readme.txt", b"hello")
    files = [("batch.zip", buffer.getvalue()), ("b.jpg", b"x"), (".hidden.png", b"y")]
    assert [name for name, _ in iter_images(files)] == ["set/a.png", "b.jpg"]


def test_predictions_csv_and_top_k() -> None:
    from finetune_core.evaluation.predict import Prediction

    probs = np.array([0.2, 0.7, 0.1])
    assert top_k(probs, ["a", "b", "c"], k=2) == [
        ("b", pytest.approx(0.7)),
        ("a", pytest.approx(0.2)),
    ]
    rows = [
        Prediction("x.png", top=top_k(probs, ["a", "b", "c"]), probs=probs),
        Prediction("bad.png", error="cannot read"),
    ]
    lines = predictions_csv(rows, ["a", "b", "c"]).splitlines()
    assert lines[0] == "file,prediction,probability,error,p:a,p:b,p:c"
    assert lines[1] == "x.png,b,0.700000,,0.200000,0.700000,0.100000"
    assert lines[2] == "bad.png,,,cannot read,,,"


# ----------------------------------------------------------------------- presets
def test_presets_round_trip_and_demo_config_is_valid() -> None:
    base = RunConfig(dataset="d")
    for preset in PRESETS:
        config = apply_preset(base, preset.key)
        assert preset_of(config) == preset.key
        assert config.problems() == []
    assert demo_config("d", pretrained_available=True).weights == "imagenet"
    offline = demo_config("d", pretrained_available=False)
    assert offline.weights == "none" and offline.problems() == []
