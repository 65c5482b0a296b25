"""Spreadsheet formula injection (issue 15 item 7).

v1 wrote class and file names such as ``=1+2.png`` or ``@SUM(1+1)*cmd|' /C calc'!A0``
into the Predict page's CSV, ``predictions.csv`` and ``manifest.csv`` as they were: a
spreadsheet opening them runs the cell. Every CSV the product writes for people goes
through ``finetune_core.csvsafe`` (a leading quote on a cell a spreadsheet would read as
a formula), and the product reads its own files back exactly.

The class test finds every CSV writer in the code by grepping, so a new one that does
not go through csvsafe fails here; each known writer round-trips the hostile names.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from finetune_core import csvsafe, runs
from finetune_core.cli import main as cli
from finetune_core.config import RunConfig
from finetune_core.data import CsvSource, ingest, load_dataset
from finetune_core.data.dataset import run_dataset
from finetune_core.data.manifest import ManifestRow, read_manifest, write_manifest
from finetune_core.evaluation.evaluate import evaluate_run, predictions_text, read_predictions
from finetune_core.evaluation.predict import Prediction, predict_files, predictions_csv
from finetune_core.models.loaded import load_run_model
from finetune_core.runs import RunFolder, RunPaths
from finetune_core.store import Workspace
from tests.helpers.data_files import image_bytes, write_image

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["finetune_core", "ui", "views", "scripts", "benchmarks", "app.py"]

# The names, the OWASP trigger characters, and the cases the escaping itself makes
# interesting: a name that already starts with a quote, quotes before a trigger, spaces or
# a newline before a trigger, a lone trigger, full-width forms, and numbers (left alone).
HOSTILE = [
    "=1+2.png",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "-x",
    "+x",
    "\tx",
    "\rx",
    '=HYPERLINK("http://example.invalid","x")',
    "'=already quoted",
    "''@two quotes",
    "'plain quote",
    "  =spaced",
    "\n+newline",
    "=",
    "\uff1dfull width",
    "-0.5",
    "+3",
    "1e-5",
    "ok",
    "",
]


def raw_cells(text: str) -> list[str]:
    return [c for row in csv.reader(io.StringIO(text, newline="")) for c in row]


def assert_nothing_runs(text: str) -> None:
    """No cell of the raw file is one a spreadsheet would evaluate."""
    live = [c for c in raw_cells(text) if csvsafe.is_risky(c) and not c.startswith("'")]
    assert not live, f"cells a spreadsheet would run: {live!r}"


# ------------------------------------------------------------------------- the rule
@pytest.mark.parametrize("name", HOSTILE)
def test_every_cell_round_trips_and_only_added_quotes_are_removed(name: str) -> None:
    cell = csvsafe.escape_cell(name)
    assert csvsafe.unescape_cell(cell) == name
    risky = csvsafe.is_risky(name)
    assert cell == ("'" + name if risky else name)
    assert csvsafe.is_risky(cell) == risky and not (risky and cell[0] in csvsafe.TRIGGERS)


def test_numbers_and_ordinary_names_are_written_unchanged() -> None:
    for value in ("-0.5", "+3", "0.123456", "1e-5", "cats", "a=b", "x-ray", "'quoted"):
        assert csvsafe.escape_cell(value) == value
    assert csvsafe.escape_cell("-1+2") == "'-1+2"  # arithmetic, not a number
    assert csvsafe.escape_cell(None) == ""
    text = csvsafe.to_text(
        ["a", "b", "c", "d", "e", "f"], [[-1, -2.5e-7, None, True, float("-inf"), "=x"]]
    )
    assert text.splitlines()[1] == "-1,-2.5e-07,,True,'-inf,'=x"


# ------------------------------------------------------------ the class: every writer
def _manifest_round_trip(tmp_path: Path, names: list[str]) -> tuple[str, list[str]]:
    rows = [
        ManifestRow(path=f"{i:03d}/{n}", label=n, split="train", sha256="0" * 64,
                    status="ok", reason=n, source=n, size=i)
        for i, n in enumerate(names)
    ]  # fmt: skip
    path = tmp_path / "manifest.csv"
    write_manifest(path, rows)
    back = read_manifest(path)
    assert back == rows
    return path.read_text(encoding="utf-8"), [r.label for r in back]


def _predictions_round_trip(tmp_path: Path, names: list[str]) -> tuple[str, list[str]]:
    classes = [n or "blank" for n in names]
    rows = [
        ["val", n, c, c, "0.500000", *("0.100000" for _ in classes)]
        for n, c in zip(names, classes, strict=True)
    ]
    (tmp_path / "run").mkdir()
    runs.save_config(RunPaths(tmp_path / "run"), RunConfig(dataset="d"))
    folder = RunFolder(tmp_path / "run")
    text = predictions_text(classes, rows)
    folder.paths.predictions.write_text(text, encoding="utf-8", newline="")
    back = read_predictions(folder)
    assert [r["path"] for r in back] == names
    assert [r["true"] for r in back] == [r["pred"] for r in back] == classes
    assert all(r["prob_pred"] == 0.5 and len(r["probs"]) == len(classes) for r in back)
    return text, [r["path"] for r in back]


def _predict_page_round_trip(tmp_path: Path, names: list[str]) -> tuple[str, list[str]]:
    classes = ["=cmd", "@a"]
    preds = [
        Prediction(name=n, top=[("=cmd", 0.75)], probs=np.array([0.75, 0.25]), error="")
        for n in names
    ]
    text = predictions_csv(preds, classes)
    back = list(csvsafe.dict_reader(io.StringIO(text, newline="")))
    assert [r["file"] for r in back] == names
    assert {r["prediction"] for r in back} == {"=cmd"}
    assert all(r["probability"] == "0.750000" for r in back)
    return text, [r["file"] for r in back]


# module that writes a CSV for people -> a round trip through its own writer and reader
ROUND_TRIPS: dict[str, Callable[[Path, list[str]], tuple[str, list[str]]]] = {
    "finetune_core/data/manifest.py": _manifest_round_trip,
    "finetune_core/evaluation/evaluate.py": _predictions_round_trip,
    "finetune_core/evaluation/predict.py": _predict_page_round_trip,
}
# modules that read CSV files people give the product (imports): user data, read raw
USER_CSV_READERS = {
    "finetune_core/data/csv_dialect.py",
    "finetune_core/data/sources.py",
    "finetune_core/data/uploads.py",
}
RAW_WRITER = re.compile(
    r"\bcsv\.(writer|DictWriter)\s*\(|\.to_csv\s*\(|from csv import|import csv as"
)
RAW_READER = re.compile(r"\bcsv\.(reader|DictReader)\s*\(|read_csv\s*\(")
SAFE_WRITER = re.compile(r"\bcsvsafe\.(writer|to_text)\s*\(")


def _sources() -> dict[str, str]:
    files: list[Path] = []
    for entry in SCANNED:
        path = ROOT / entry
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return {f.relative_to(ROOT).as_posix(): f.read_text(encoding="utf-8") for f in files}


def test_every_csv_writer_in_the_code_goes_through_csvsafe() -> None:
    sources = _sources()
    assert "finetune_core/evaluation/predict.py" in sources  # the scan sees the code
    raw = sorted(p for p, text in sources.items() if RAW_WRITER.search(text))
    assert raw == ["finetune_core/csvsafe.py"], (
        f"{raw}: a CSV written for people must use finetune_core.csvsafe (writer/to_text)"
    )
    readers = {p for p, text in sources.items() if RAW_READER.search(text)}
    assert readers <= USER_CSV_READERS | {"finetune_core/csvsafe.py"}, (
        f"{sorted(readers - USER_CSV_READERS)}: the product's own CSVs are read with "
        "csvsafe.reader/dict_reader (user imports: add them to USER_CSV_READERS)"
    )
    safe = {p for p, text in sources.items() if SAFE_WRITER.search(text)}
    assert safe == set(ROUND_TRIPS), f"add a round trip for {sorted(safe - set(ROUND_TRIPS))}"


@pytest.mark.parametrize("module", sorted(ROUND_TRIPS))
def test_every_writer_neutralises_hostile_names_and_reads_them_back(
    module: str, tmp_path: Path
) -> None:
    text, back = ROUND_TRIPS[module](tmp_path, HOSTILE)
    assert back == HOSTILE
    assert_nothing_runs(text)
    cells = raw_cells(text)
    assert "'=1+2.png" in cells and "'@SUM(1+1)*cmd|' /C calc'!A0" in cells
    assert "''=already quoted" in cells and "'plain quote" in cells and "-0.5" in cells


# ------------------------------------------------------------ the attack, through ingest
def test_hostile_labels_from_a_csv_import_reach_manifest_csv_neutralised(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    images = tmp_path / "upload"
    names = [n for n in HOSTILE if n.strip()]
    lines = ["path,label"]
    for i, label in enumerate(names):
        for j in range(3):
            write_image(images / f"{i}-{j}.png", seed=10 * i + j, fmt="PNG")
            quoted = '"' + label.replace('"', '""') + '"'
            lines.append(f"{i}-{j}.png,{quoted}")
    (images / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8", newline="")
    result = ingest(ws, CsvSource(images / "labels.csv"), name="hostile")
    dataset = load_dataset(ws, result.dataset.id)
    kept = sorted({n.strip() for n in names})  # a CSV import strips its cells, nothing more
    assert sorted(dataset.class_names) == kept
    assert sorted({r.label for r in dataset.all_rows()}) == kept
    text = (dataset.root / "manifest.csv").read_text(encoding="utf-8")
    assert_nothing_runs(text)
    assert "'=1+2.png" in raw_cells(text)


@pytest.mark.slow
def test_a_run_on_hostile_class_names_writes_safe_predictions_and_predict_csv(
    tmp_path: Path,
) -> None:
    # The whole path of v1's 14 and 18 live cells: train, evaluate, predict.
    ws = Workspace(tmp_path / "ws")
    classes = ["=1+2", "@SUM(1+1)*cmd|'-C calc'!A0", "-x"]  # no "/" in a folder name
    for i, label in enumerate(classes):
        for j in range(6):
            write_image(tmp_path / "tree" / label / f"{label}{j}.png", seed=10 * i + j, fmt="PNG")
    rc = cli.main(
        [
            "--workspace", str(ws.root), "train", "--data", str(tmp_path / "tree"),
            "--model", "resnet18", "--weights", "none", "--strategy", "probe", "--epochs", "1",
            "--image-size", "32", "--batch-size", "8", "--set", "channels_last=false",
            "--set", "mixed_precision=off", "--out", str(tmp_path / "run"), "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    run = RunFolder(tmp_path / "run")
    evaluate_run(run, workspace=ws, cache_dir=ws.cache_dir)
    text = run.paths.predictions.read_text(encoding="utf-8")
    assert_nothing_runs(text)
    assert {"'=1+2", "'-x"} <= set(raw_cells(text))
    labels = {row.path: row.label for row in run_dataset(run, ws).all_rows()}
    back = read_predictions(run)
    assert back and all(r["true"] == labels[r["path"]] for r in back)
    assert {r["pred"] for r in back} <= set(classes)
    model = load_run_model(run)
    files = [(n, image_bytes(k, fmt="PNG")) for k, n in enumerate(("=1+2.png", "+x.png", "@a.png"))]
    preds = predict_files(model, files)
    page_csv = predictions_csv(preds, model.class_names)
    assert_nothing_runs(page_csv)
    rows = list(csvsafe.dict_reader(io.StringIO(page_csv, newline="")))
    assert [r["file"] for r in rows] == ["=1+2.png", "+x.png", "@a.png"]
    assert {r["prediction"] for r in rows} <= set(classes)
