"""The eval, predict and export commands on a run folder that `train --out` really wrote."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from finetune_core.cli import main as cli
from finetune_core.data import create_demo_dataset, open_rgb
from finetune_core.evaluation.honesty import split_honesty
from finetune_core.export import writers
from finetune_core.models.loaded import load_run_model
from finetune_core.runs import RunFolder
from finetune_core.store import RunRecord, RunStatus, Workspace

pytestmark = pytest.mark.slow  # every test here trains a model (or uses one trained here)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A workspace dataset and a run folder outside the workspace, trained by the CLI."""
    base = tmp_path_factory.mktemp("cli")
    ws = Workspace(base / "ws")
    dataset = create_demo_dataset(ws, per_class=12, size=40)
    run_dir = base / "runs" / "shapes"
    rc = cli.main(
        [
            "--workspace", str(ws.root), "train", "--data", dataset.id, "--model", "resnet18",
            "--weights", "none", "--strategy", "probe", "--epochs", "2", "--image-size", "32",
            "--batch-size", "16", "--lr", "0.01", "--set", "channels_last=false",
            "--set", "mixed_precision=off", "--out", str(run_dir), "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    return {"ws": ws, "dataset": dataset, "run_dir": run_dir, "base": base}


def test_eval_writes_eval_and_report_and_prints_headline_metrics(cli_run, capsys) -> None:
    run_dir = cli_run["run_dir"]
    assert cli.main(["eval", str(run_dir), "--quiet"]) == 0  # run.json names the workspace
    out = capsys.readouterr().out
    result = json.loads((run_dir / "eval.json").read_text())
    assert set(result["splits"]) == {"val", "test"}
    lines = out.splitlines()
    assert lines[0].split() == [
        "split", "images", "accuracy", "95%", "interval", "baseline", "bal.", "acc", "macro",
        "F1", "ECE",
    ]  # fmt: skip
    for split, m in result["splits"].items():
        honest = split_honesty(result, split)
        lo, hi = honest.interval
        [row] = [line.split() for line in lines if line.startswith(split + " ")]
        assert row == [
            split,
            str(m["n"]),
            f"{m['accuracy']:.1%}",
            f"{lo:.1%}–{hi:.1%}",
            f"{honest.baseline:.1%}",
            f"{m['balanced_accuracy']:.1%}",
            f"{m['macro']['f1']:.1%}",
            f"{m['calibration']['ece']:.1%}",
        ]
        assert honest.text in lines  # which split, whether it chose the model, baseline
    assert (
        split_honesty(result, "val").chose_model and not split_honesty(result, "test").chose_model
    )
    assert f"report: {run_dir / 'report.html'}" in out
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "shapes" in html and str(cli_run["ws"].root) not in html

    assert cli.main(["eval", str(run_dir), "--quiet", "--json"]) == 0
    headline = json.loads(capsys.readouterr().out)
    assert headline["val"]["accuracy"] == result["splits"]["val"]["accuracy"]
    assert headline["test"]["macro_f1"] == result["splits"]["test"]["macro"]["f1"]
    assert headline["val"]["chose_model"] is True and headline["test"]["chose_model"] is False
    assert headline["val"]["label"] == split_honesty(result, "val").label


def test_eval_by_run_id_in_the_workspace(cli_run, capsys) -> None:
    ws = cli_run["ws"]
    ws.add_run(RunRecord(id="r-cli-copy", status=RunStatus.SUCCEEDED, name="copied"))
    shutil.copytree(cli_run["run_dir"], ws.run_dir("r-cli-copy"), dirs_exist_ok=True)
    rc = cli.main(["--workspace", str(ws.root), "eval", "r-cli-copy", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert (ws.run_dir("r-cli-copy") / "eval.json").is_file()
    assert "copied" in (ws.run_dir("r-cli-copy") / "report.html").read_text(encoding="utf-8")


def test_eval_without_a_checkpoint_or_a_run_says_why(cli_run, tmp_path, capsys) -> None:
    empty = tmp_path / "empty-run"
    shutil.copytree(cli_run["run_dir"], empty, ignore=shutil.ignore_patterns("checkpoints"))
    for name in ("eval.json", "report.html"):
        (empty / name).unlink(missing_ok=True)
    assert cli.main(["eval", str(empty)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no saved model to evaluate" in err
    assert not (empty / "eval.json").exists() and not (empty / "report.html").exists()

    ws = str(cli_run["ws"].root)
    assert cli.main(["--workspace", ws, "eval", str(tmp_path / "nope")]) == 1
    assert "neither a run folder nor the id of a run" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path)]) == 1
    assert "not a run folder (no config.json)" in capsys.readouterr().err


def test_predict_reports_bad_files_and_still_predicts_the_others(cli_run, tmp_path, capsys) -> None:
    ds = cli_run["dataset"]
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    (folder / ".ipynb_checkpoints").mkdir()
    sources = [ds.image_path(r) for r in ds.rows("val")]
    for i, src in enumerate(sources):
        shutil.copy(src, (folder / "nested" if i % 2 else folder) / f"img{i}.jpg")
    shutil.copy(sources[0], folder / ".ipynb_checkpoints" / "img0-checkpoint.jpg")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (folder / "notes.txt").write_text("not an image, not an image name")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(sources[0].read_bytes()[:300])

    rc = cli.main(["predict", str(cli_run["run_dir"]), str(folder), str(truncated)])
    captured = capsys.readouterr()
    assert rc == 1
    rows = [line.split("\t") for line in captured.out.splitlines()]
    images = sorted(p for p in folder.rglob("img*.jpg") if ".ipynb" not in str(p))
    assert [Path(r[0]) for r in rows] == images
    loaded = load_run_model(RunFolder(cli_run["run_dir"]))
    probs = loaded.predict_images([open_rgb(p) for p in images])
    assert [r[1] for r in rows] == [loaded.class_names[i] for i in probs.argmax(1)]
    assert [float(r[2]) for r in rows] == pytest.approx(probs.max(1), abs=1e-4)
    err = captured.err.splitlines()
    assert len(err) == 2
    assert err[0].startswith(f"{folder / 'corrupt.jpg'}\terror: not a usable image")
    assert err[1].startswith(f"{truncated}\terror: not a usable image")


def test_predict_json_with_top_k(cli_run, capsys) -> None:
    ds = cli_run["dataset"]
    image = ds.image_path(ds.rows("test")[0])
    assert cli.main(["predict", str(cli_run["run_dir"]), str(image), "--json", "--top-k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    [prediction] = out["predictions"]
    loaded = load_run_model(RunFolder(cli_run["run_dir"]))
    probs = loaded.predict_images([open_rgb(image)])[0]
    order = np.argsort(-probs)
    assert [t["label"] for t in prediction["top_k"]] == [loaded.class_names[i] for i in order]
    assert [t["prob"] for t in prediction["top_k"]] == pytest.approx(probs[order].tolist())
    assert prediction["label"] == prediction["top_k"][0]["label"] and out["errors"] == []


def test_predictions_stream_one_batch_at_a_time(cli_run) -> None:
    """A folder of any size is read one batch ahead, not all at once."""
    from finetune_core.evaluation.predict import BATCH, predict_stream

    ds = cli_run["dataset"]
    image = ds.image_path(ds.rows("val")[0])
    pulled: list[int] = []

    def items():
        for i in range(2 * BATCH + 3):
            pulled.append(i)
            yield f"img{i}.jpg", image

    loaded = load_run_model(RunFolder(cli_run["run_dir"]))
    stream = predict_stream(loaded, items(), k=1)
    first = next(stream)
    assert first.name == "img0.jpg" and first.error == "" and len(pulled) == BATCH
    rest = list(stream)
    assert [p.name for p in rest][-1] == f"img{2 * BATCH + 2}.jpg" and len(rest) == 2 * BATCH + 2
    assert len({p.label for p in [first, *rest]}) == 1  # the same image, the same answer


def test_export_command_prints_where_and_the_check(cli_run, capsys) -> None:
    run_dir = cli_run["run_dir"]
    assert cli.main(["eval", str(run_dir), "--quiet"]) == 0
    assert "No exported models were verified" in (run_dir / "report.html").read_text("utf-8")
    capsys.readouterr()
    assert cli.main(["export", str(run_dir), "--format", "checkpoint"]) == 0
    out = capsys.readouterr().out
    report = (run_dir / "report.html").read_text("utf-8")  # rebuilt: it shows the export
    assert "No exported models were verified" not in report and "checkpoint" in report
    assert f"checkpoint export: {run_dir / 'export' / 'checkpoint.zip'}" in out
    assert "Verified: the checkpoint (state_dict) export matches the PyTorch model" in out
    assert "16 images of the run's dataset" in out  # the dataset was found via run.json


def test_export_command_fails_when_verification_fails(
    cli_run, tmp_path, monkeypatch, capsys
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(cli_run["run_dir"], run_dir, ignore=shutil.ignore_patterns("export"))
    real = writers.WRITERS["pt2"]

    def skewed(model, example, tmp, run) -> None:
        with torch.no_grad():
            model.head[1].bias.add_(torch.tensor([4.0, -4.0, 0.0]))
        try:
            real(model, example, tmp, run)
        finally:
            with torch.no_grad():
                model.head[1].bias.sub_(torch.tensor([4.0, -4.0, 0.0]))

    monkeypatch.setitem(writers.WRITERS, "pt2", skewed)
    assert cli.main(["export", str(run_dir), "--format", "pt2", "--json"]) == 3
    result = json.loads(capsys.readouterr().out)
    assert result["verified"] is False and result["max_abs_diff"] > result["tolerance"]
    assert result["message"].startswith("NOT verified")
    check = json.loads((run_dir / "export" / "pt2" / "verification.json").read_text())
    assert check["passed"] is False


def test_export_command_refuses_a_run_without_checkpoint(cli_run, tmp_path, capsys) -> None:
    empty = tmp_path / "empty-run"
    ignore = shutil.ignore_patterns("checkpoints", "export")
    shutil.copytree(cli_run["run_dir"], empty, ignore=ignore)
    assert cli.main(["export", str(empty), "--format", "onnx"]) == 1
    assert "no saved model to export" in capsys.readouterr().err
    assert not (empty / "export").exists()


def test_python_dash_m_entry_point(cli_run) -> None:
    ds = cli_run["dataset"]
    image = ds.image_path(ds.rows("val")[0])
    proc = subprocess.run(
        [sys.executable, "-m", "finetune_core", "predict", str(cli_run["run_dir"]), str(image)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    path, label, prob = proc.stdout.strip().split("\t")
    assert path == str(image) and label in ds.class_names and 0 < float(prob) <= 1
