"""The Evaluation page tells the honest story (issue 13 items 4, 5, 13): which split a figure
is on and whether it chose the model, the baseline and interval next to the accuracy,
warnings for small splits, when the report was built (and it is rebuilt after an export or
a re-evaluation), file names in captions, and the informative images for activation maps.

One tiny real run (resnet18, random weights, 32 px, 1 epoch) on the demo data, trained and
evaluated once for the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st

from finetune_core.data import create_demo_dataset
from finetune_core.evaluation.evaluate import evaluate_run, read_predictions
from finetune_core.evaluation.honesty import HELD_OUT, OPTIMISTIC, split_honesty
from finetune_core.jobs.manager import JobManager
from finetune_core.jobs.postrun import DEFAULT_HOOKS
from finetune_core.reporting.gallery import default_cam_paths
from finetune_core.reporting.report import build_report, report_state
from finetune_core.runs import RunFolder
from finetune_core.store import RunStatus, Workspace
from tests.app.test_pages import assert_ok, open_page, plain, quick, texts, use_workspace
from ui import services

pytestmark = pytest.mark.slow  # one tiny training run for the module


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("honest") / "ws"
    ws = Workspace(root)
    dataset = create_demo_dataset(ws, per_class=8, size=32, creator="alice")
    manager = JobManager(ws, post_run=list(DEFAULT_HOOKS))
    try:
        run_id = manager.submit(quick(dataset.id, epochs=1, name="honest"), creator="alice")
        assert manager.wait(run_id, timeout=180) == RunStatus.SUCCEEDED
    finally:
        manager.shutdown()
    return root, run_id


@pytest.fixture
def trained(
    trained_root: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Workspace, RunFolder]]:
    root, run_id = trained_root
    use_workspace(monkeypatch, root)
    st.cache_resource.clear()
    ws = services.get_workspace()
    yield ws, RunFolder(ws.run_dir(run_id))
    st.cache_resource.clear()
    st.cache_data.clear()


def metrics_of(at) -> dict[str, str]:  # noqa: ANN001 - AppTest
    return {m.label: m.value for m in at.metric}


def warnings_of(at) -> list[str]:  # noqa: ANN001
    """Every warning box, and each bullet of a box that lists several."""
    out = []
    for box in at.warning:
        text = plain(box.value)
        out.append(text)
        out += [line.removeprefix("- ") for line in text.splitlines() if line.startswith("- ")]
    return out


def test_validation_only_is_labelled_optimistic_with_baseline_interval_and_warnings(
    trained: tuple[Workspace, RunFolder],
) -> None:
    ws, folder = trained
    evaluation = evaluate_run(folder, workspace=ws, cache_dir=ws.cache_dir, splits=("val",))
    build_report(folder, ws)
    honest = split_honesty(evaluation, "val")
    assert honest.n < 30, "the demo's validation split is small: the warning must show"

    at = open_page("evaluation", run=folder.id)
    shown = warnings_of(at)
    assert honest.text in shown
    assert OPTIMISTIC in honest.text
    assert any("There is no test split" in w for w in shown)
    assert any(w.startswith(f"Only {honest.n} image(s) in this split") for w in shown)
    cards = metrics_of(at)
    lo, hi = honest.interval
    assert cards["Accuracy"] == f"{honest.accuracy * 100:.1f}%"
    assert cards["95% interval"] == f"{lo * 100:.1f}%–{hi * 100:.1f}%"
    assert cards["Majority baseline"] == f"{honest.baseline * 100:.1f}%"
    assert "Report built" in texts(at) and "up to date" in texts(at)
    # The report says the same.
    html = folder.paths.report.read_text(encoding="utf-8")
    assert "optimistic: this split chose the best epoch" in html
    assert "There is no test split" in html


def test_export_and_re_evaluation_rebuild_the_report_and_the_page_shows_its_age(
    trained: tuple[Workspace, RunFolder],
) -> None:
    ws, folder = trained
    at = open_page("evaluation", run=folder.id)
    at.button(key="evaluate").click().run()  # Re-evaluate: val and test
    assert_ok(at)
    evaluation = folder.evaluation()
    assert set(evaluation["splits"]) == {"val", "test"}
    state = report_state(folder)
    assert not state.stale, state
    html = folder.paths.report.read_text(encoding="utf-8")
    test = split_honesty(evaluation, "test")
    assert "Test accuracy (held out)" in html and HELD_OUT in html
    assert test.interval_text in html, "the report shows the new evaluation's numbers"
    # A fresh visit opens on the test split: held out, shown as information, not a warning.
    at = open_page("evaluation", run=folder.id)
    assert at.segmented_control(key=f"eval_split_{folder.id}").value == "test"
    assert any(plain(i.value) == test.text for i in at.info)

    at.selectbox(key="export_fmt").set_value("checkpoint")
    at.button(key="export_go").click().run()
    assert_ok(at)
    assert not report_state(folder).stale
    exports = folder.paths.report.read_text(encoding="utf-8")
    assert "No exported models were verified" not in exports and "<td>checkpoint</td>" in exports
    assert "up to date" in texts(at)
    built = report_state(folder).built_at
    assert built is not None and built.astimezone().strftime("%Y-%m-%d %H:%M") in texts(at)


def test_captions_name_the_file_and_activation_maps_start_with_mistakes(
    trained: tuple[Workspace, RunFolder],
) -> None:
    ws, folder = trained
    at = open_page("evaluation", run=folder.id)
    split = at.segmented_control(key=f"eval_split_{folder.id}").value
    preds = [p for p in read_predictions(folder) if p["split"] == split]
    chosen = at.multiselect(key=f"cam_images_{folder.id}_{split}")
    assert chosen.value == default_cam_paths(preds)
    wrong = sorted((p for p in preds if p["true"] != p["pred"]), key=lambda p: -p["prob_pred"])
    if wrong:
        assert chosen.value[0] == wrong[0]["path"], "the most confident mistake comes first"

    # A confusion-matrix cell's captions: file name, split and folder of each image.
    first = preds[0]
    names = folder.evaluation()["class_names"]
    at.session_state["eval_cell"] = {"run": folder.id, "split": split,
                                     "cell": [names.index(first["true"]),
                                              names.index(first["pred"])]}  # fmt: skip
    at.run()
    assert_ok(at)
    captions = [plain(c.value) for c in at.caption]
    assert any(f"{split} split · from " in c for c in captions), captions[:8]

    at.toggle(key=f"cam_on_{folder.id}").set_value(True).run()
    assert_ok(at)
    image_captions = [plain(c) for image in at.image for c in image.captions]
    heat = [c for c in image_captions if "· predicted" in c]
    assert len(heat) == len(chosen.value)
    # Each map says how it was made: a 32 px resnet18's 1x1 feature map often gives no
    # positive Grad-CAM evidence, and then the map is saliency and is called so.
    notes = [plain(c.value) for c in at.caption if c.value.startswith(("Grad", "The", "No"))]
    for caption in heat:
        assert caption.startswith(
            ("Grad-CAM · predicted", "saliency (input gradients) · predicted")
        )
    saliency = sum(c.startswith("saliency") for c in heat)
    assert saliency == sum("showing input-gradient saliency instead" in n for n in notes), notes
    assert sum(f"{split} split" in c for c in image_captions) >= len(chosen.value)
