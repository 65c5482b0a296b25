"""The report never goes stale: what it shows (evaluation, export verifications) is rebuilt
after each change, and its state says when it was built and what changed since."""

from __future__ import annotations

import time
from pathlib import PurePosixPath
from typing import Any

import pytest

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.data.dataset import run_dataset
from finetune_core.evaluation.evaluate import evaluate_run, read_predictions
from finetune_core.evaluation.honesty import OPTIMISTIC, headline
from finetune_core.export import export_run
from finetune_core.jobs import postrun
from finetune_core.jobs.manager import JobManager
from finetune_core.reporting.gallery import source_names
from finetune_core.reporting.report import (
    build_report,
    collect_report_data,
    refresh_report,
    report_state,
)
from finetune_core.runs import RunFolder
from finetune_core.store import RunStatus, Workspace

pytestmark = pytest.mark.slow  # trains one tiny model


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    dataset = create_demo_dataset(ws, per_class=8, size=32)
    manager = JobManager(ws, post_run=list(postrun.DEFAULT_HOOKS))
    try:
        run_id = manager.submit(
            RunConfig(dataset=dataset.id, name="fresh", model="resnet18", weights="none",
                      strategy="probe", epochs=1, image_size=32, batch_size=16,
                      channels_last=False, mixed_precision="off"),
        )  # fmt: skip
        assert manager.wait(run_id, timeout=300) == RunStatus.SUCCEEDED
    finally:
        manager.shutdown()
    return {"ws": ws, "run": RunFolder(ws.run_dir(run_id))}


def section(html: str, anchor: str) -> str:
    start = html.index(f"<section id='{anchor}'>")
    return html[start : html.index("</section>", start)]


def test_export_after_evaluation_reaches_the_report(evaluated: dict[str, Any]) -> None:
    ws, run = evaluated["ws"], evaluated["run"]
    state = report_state(run)
    assert state.built_at is not None and not state.stale, "the post-run hook built it"
    before = section(run.paths.report.read_text(encoding="utf-8"), "export")
    assert "No exported models were verified" in before

    time.sleep(0.02)  # the export's files must be measurably newer than the report
    result = export_run(run, "checkpoint", workspace=ws)
    state = report_state(run)
    assert state.stale and state.changed == ("the checkpoint (state_dict) export",)

    assert refresh_report(run, ws) == run.paths.report
    assert not report_state(run).stale
    exports = section(run.paths.report.read_text(encoding="utf-8"), "export")
    assert "No exported models were verified" not in exports
    assert "<td>checkpoint</td>" in exports
    assert ("sev-ok'>passed" if result.verified else "sev-error'>failed") in exports
    built = run.paths.report.stat().st_mtime
    assert refresh_report(run, ws) == run.paths.report
    assert run.paths.report.stat().st_mtime == built, "an up-to-date report is left alone"


def test_re_evaluation_shows_the_new_numbers(evaluated: dict[str, Any]) -> None:
    ws, run = evaluated["ws"], evaluated["run"]
    build_report(run, ws)
    html = run.paths.report.read_text(encoding="utf-8")
    assert "Test accuracy (held out)" in html and "Validation accuracy (optimistic)" in html

    time.sleep(0.02)
    evaluation = evaluate_run(run, workspace=ws, cache_dir=ws.cache_dir, splits=("val",))
    assert report_state(run).changed[:1] == ("the evaluation",)
    refresh_report(run, ws)
    html = run.paths.report.read_text(encoding="utf-8")
    honest = headline(evaluation)
    assert honest.split == "val" and honest.label == OPTIMISTIC
    assert f"<p class='headline-text'>{honest.text.replace(chr(39), '&#39;')}</p>" in html
    assert "There is no test split" in html
    assert "Test accuracy" not in html, "the report shows the new evaluation only"
    # The full evaluation again, for the other tests of this module.
    evaluate_run(run, workspace=ws, cache_dir=ws.cache_dir)
    refresh_report(run, ws)
    assert "Test accuracy" in run.paths.report.read_text(encoding="utf-8")


def test_gallery_thumbnails_name_their_file_and_origin(evaluated: dict[str, Any]) -> None:
    ws, run = evaluated["ws"], evaluated["run"]
    data = collect_report_data(run, ws)
    if not data.gallery:
        pytest.skip("the tiny run made no mistakes")
    sources = source_names(run_dataset(run, ws))
    wrong = [r for r in read_predictions(run) if r["true"] != r["pred"]]
    expected = {(PurePosixPath(sources[r["path"]]).name, r["split"]) for r in wrong}
    assert {(g["name"], g["split"]) for g in data.gallery} <= expected
    for g in data.gallery:
        assert g["origin"].startswith(f"{g['split']} split")
    errors = section(run.paths.report.read_text(encoding="utf-8"), "errors")
    first = data.gallery[0]
    assert (
        f"<div class='src' title='{first['name']} · {first['origin']}'>{first['name']}</div>"
        in errors
    )
