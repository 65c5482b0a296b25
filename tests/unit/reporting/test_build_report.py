"""build_report on a really trained and evaluated run: what the report shows, and what it
must never show (absolute paths, files outside the dataset)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.evaluation.evaluate import read_predictions
from finetune_core.fsutil import atomic_write_json
from finetune_core.jobs import postrun
from finetune_core.jobs.manager import JobManager
from finetune_core.reporting.report import GALLERY_LIMIT, build_report, collect_report_data
from finetune_core.runs import RunFolder
from finetune_core.store import RunStatus, Workspace

pytestmark = pytest.mark.slow  # every test here trains a model (or uses one trained here)

NAME = 'Shapes <i> & "probe"'
ESCAPED = "Shapes &lt;i&gt; &amp; &#34;probe&#34;"  # MarkupSafe's entities


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A barely trained run (so it makes mistakes), evaluated and reported by the post-run hooks."""
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    dataset = create_demo_dataset(ws, per_class=12, size=40)
    manager = JobManager(ws, post_run=list(postrun.DEFAULT_HOOKS))
    try:
        run_id = manager.submit(
            RunConfig(
                dataset=dataset.id,
                name=NAME,
                notes="first try on the demo shapes",
                model="resnet18",
                weights="none",
                strategy="probe",
                epochs=1,
                image_size=32,
                batch_size=16,
                lr=1e-4,
                channels_last=False,
                mixed_precision="off",
            ),
            creator="ana",
        )
        assert manager.wait(run_id, timeout=300) == RunStatus.SUCCEEDED
    finally:
        manager.shutdown()
    run = RunFolder(ws.run_dir(run_id))
    assert ws.get_run(run_id).error == ""  # no post-run step failed
    return {"ws": ws, "dataset": dataset, "run": run}


def section(html: str, anchor: str) -> str:
    start = html.index(f"<section id='{anchor}'>")
    return html[start : html.index("</section>", start)]


def misclassified(run: RunFolder) -> list[dict]:
    return [r for r in read_predictions(run) if r["true"] != r["pred"]]


def test_post_run_hooks_write_a_complete_report(evaluated) -> None:
    ws, ds, run = evaluated["ws"], evaluated["dataset"], evaluated["run"]
    html = (run.path / "report.html").read_text(encoding="utf-8")

    assert ESCAPED in html and NAME not in html
    assert run.id in html and "ana" in html and "SUCCEEDED" in html
    assert "first try on the demo shapes" in html
    for name in ds.class_names:
        assert name in html
    assert ds.name in html and ds.fingerprint in html
    assert "python -m finetune_core train" in html  # the equivalent CLI command
    confusion = section(html, "confusion")
    assert re.search(r"<div class='chart' id='fig-\d+'", confusion)
    assert "Validation confusion matrix" in html and "Test confusion matrix" in html
    wrong = misclassified(run)
    assert wrong, "a one-epoch model at lr 1e-4 should make mistakes"
    errors = section(html, "errors")
    thumbs = re.findall(r"<img src='data:image/jpeg;base64,[A-Za-z0-9+/=]+'", errors)
    assert len(thumbs) == min(len(wrong), GALLERY_LIMIT)
    for row in wrong:
        assert f"true {row['true']}, predicted {row['pred']}" in errors
    assert str(ws.root) not in html
    assert "/datasets/" not in html and "workspace.db" not in html


def test_report_data_matches_the_run_files(evaluated) -> None:
    run, ws, ds = evaluated["run"], evaluated["ws"], evaluated["dataset"]
    data = collect_report_data(run)
    record = ws.get_run(run.id)
    assert data.run_name == NAME and data.creator == "ana" and data.status == "SUCCEEDED"
    assert data.created_at == record.created_at and data.finished_at == record.finished_at
    assert data.metrics == run.evaluation()["splits"]
    assert data.history == run.history() and len(data.history) == 1
    assert data.best_epoch == record.best_epoch == 1
    assert data.split_counts == ds.split_counts()
    assert data.class_names == ds.class_names
    assert data.health_summary == [
        {"severity": f.severity, "message": f.message, "count": f.count} for f in ds.health.findings
    ]
    assert data.environment["torch"] and "CLI command" in data.environment
    for item in data.gallery:
        assert item["thumbnail_png"][:2] == b"\xff\xd8"
        assert item["true"] != item["pred"] and item["split"] in ("val", "test")
        assert 0 <= item["prob_true"] <= 1 and item["prob_true"] <= item["prob_pred"]


def test_build_report_rewrites_atomically(evaluated) -> None:
    run = evaluated["run"]
    path = build_report(run)
    assert path == run.path / "report.html"
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert not [p.name for p in run.path.iterdir() if p.name.endswith(".tmp")]


def copy_outside(evaluated, tmp_path: Path, workspace: str | None) -> RunFolder:
    """The run folder copied elsewhere, as `train --out` would leave it."""
    dest = tmp_path / "cli-runs" / "my-run"
    shutil.copytree(evaluated["run"].path, dest)
    info = json.loads((dest / "run.json").read_text())
    info["workspace"] = workspace
    atomic_write_json(dest / "run.json", info)
    (dest / "report.html").unlink()
    return RunFolder(dest)


def test_cli_run_folder_outside_the_workspace(evaluated, tmp_path) -> None:
    ws = evaluated["ws"]
    run = copy_outside(evaluated, tmp_path, str(ws.root))
    html = build_report(run).read_text(encoding="utf-8")
    assert ESCAPED in html  # from config.json
    assert "<h1>" in html and "my-run" in html
    thumbs = re.findall(r"<figure class='thumb'>", section(html, "errors"))
    assert len(thumbs) == min(len(misclassified(run)), GALLERY_LIMIT)
    assert "Health check" in html or "No health-check findings" in html
    assert str(ws.root) not in html and str(tmp_path) not in html


def test_missing_dataset_and_paths_outside_it_show_no_images(evaluated, tmp_path) -> None:
    run = copy_outside(evaluated, tmp_path, None)
    html = build_report(run).read_text(encoding="utf-8")
    assert "<figure class='thumb'>" not in html
    assert "dataset is no longer available" in html
    assert "Validation confusion matrix" in html  # the metrics still come from eval.json

    # A predictions.csv pointing outside the dataset never makes the report read the file.
    other = copy_outside(evaluated, tmp_path / "second", str(evaluated["ws"].root))
    rows = list(csv.reader((other.path / "predictions.csv").open(encoding="utf-8")))
    header, body = rows[0], rows[1:]
    bad = next(i for i, r in enumerate(body) if r[2] != r[3])
    secret = tmp_path / "secret.jpg"
    shutil.copy(evaluated["dataset"].image_path(evaluated["dataset"].rows("val")[0]), secret)
    body[bad][1] = "../../../../../../" + str(secret).lstrip("/")
    body[(bad + 1) % len(body)][1] = str(secret)
    with (other.path / "predictions.csv").open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([header, *body])
    data = collect_report_data(other)
    wrong = misclassified(other)
    outside = [r for r in wrong if "secret" in r["path"]]
    assert outside and len(data.gallery) == min(len(wrong), GALLERY_LIMIT) - len(outside)


def test_export_checks_appear_in_the_report(evaluated, tmp_path) -> None:
    run = copy_outside(evaluated, tmp_path, str(evaluated["ws"].root))
    check = {"format": "onnx", "passed": False, "max_abs_diff": 0.25, "tolerance": 1e-4}
    atomic_write_json(run.path / "export" / "onnx" / "verification.json", check)
    html = build_report(run).read_text(encoding="utf-8")
    exports = section(html, "export")
    assert "<td>onnx</td>" in exports and "sev-error'>failed" in exports
    assert "2.50e-01" in exports and "1.00e-04" in exports
