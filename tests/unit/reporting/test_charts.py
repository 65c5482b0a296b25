"""Chart builders: traces carry the right data, labels are escaped, empty input explains itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from finetune_core.evaluation.metrics import compute_metrics
from finetune_core.reporting import charts

HISTORY = [
    {"epoch": 1, "train_loss": 1.2, "val_loss": 1.0, "train_accuracy": 0.5,
     "val_accuracy": 0.55, "lr": 1e-4, "phase": "frozen"},
    {"epoch": 2, "train_loss": 0.8, "val_loss": 0.7, "train_accuracy": 0.7,
     "val_accuracy": 0.72, "lr": 1e-3, "phase": "unfrozen"},
    {"epoch": 3, "train_loss": 0.5, "val_loss": 0.6, "train_accuracy": 0.82,
     "val_accuracy": 0.8, "lr": 5e-4, "phase": "unfrozen"},
    {"epoch": 4, "train_loss": 0.3, "val_loss": 0.65, "train_accuracy": 0.9,
     "val_accuracy": 0.78, "lr": 1e-5, "phase": "unfrozen"},
]  # fmt: skip


def _trace(fig: go.Figure, name: str, xaxis: str | None = None) -> go.BaseTraceType:
    found = [t for t in fig.data if t.name == name and (xaxis is None or t.xaxis == xaxis)]
    assert found, f"no trace {name!r} in {[t.name for t in fig.data]}"
    return found[0]


def _annotations(fig: go.Figure) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def _metrics(names: list[str], seed: int = 0, n: int = 120) -> dict:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(names), size=n)
    logits = rng.normal(size=(n, len(names)))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return compute_metrics(y, probs, names)


# ------------------------------------------------------------ training curves
def test_training_curves_data_and_best_epoch() -> None:
    fig = charts.training_curves(HISTORY, best_epoch=3)
    assert fig.layout.template.layout.paper_bgcolor is not None  # plotly_white applied
    assert list(_trace(fig, "train", "x").y) == [1.2, 0.8, 0.5, 0.3]
    assert list(_trace(fig, "val", "x").y) == [1.0, 0.7, 0.6, 0.65]
    assert list(_trace(fig, "val", "x2").y) == [0.55, 0.72, 0.8, 0.78]
    assert list(_trace(fig, "learning rate", "x3").y) == [1e-4, 1e-3, 5e-4, 1e-5]
    assert list(_trace(fig, "train").x) == [1, 2, 3, 4]
    # a dashed vertical line at epoch 3 on each of the three panels
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert sorted(s.xref for s in lines) == ["x", "x2", "x3"]
    assert all(s.x0 == s.x1 == 3 for s in lines)
    assert "best epoch 3" in _annotations(fig)
    stars = [t for t in fig.data if t.name == "best"]
    assert [(t.x[0], t.y[0]) for t in stars] == [(3, 0.6), (3, 0.8)]
    # phases: the frozen epoch is shaded and both phases are labelled
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert rects and all(r.x0 == 0.5 and r.x1 == 1.5 for r in rects)
    assert {"frozen", "unfrozen"} <= set(_annotations(fig))
    assert fig.layout.yaxis3.type == "log"  # the LR spans two decades
    assert fig.layout.yaxis3.dtick == "D2"  # labels at 1, 2 and 5 per decade: not crowded
    json.loads(fig.to_json())


@pytest.mark.parametrize(
    ("span", "step"), [(0, 1), (8, 1), (9, 2), (20, 5), (59, 10), (99, 20), (1000, 200)]
)
def test_epoch_ticks_are_whole_and_few(span: int, step: int) -> None:
    assert charts.epoch_tick_step(span) == step
    assert span / step <= 8


def test_training_curves_label_whole_epochs_without_crowding() -> None:
    long = [dict(HISTORY[-1], epoch=e) for e in range(1, 21)]
    fig = charts.training_curves(long, best_epoch=5)
    assert {fig.layout.xaxis.dtick, fig.layout.xaxis2.dtick, fig.layout.xaxis3.dtick} == {5}
    assert charts.training_curves(HISTORY, best_epoch=3).layout.xaxis.dtick == 1


def test_training_curves_empty_and_partial_history() -> None:
    fig = charts.training_curves([], best_epoch=None)
    assert len(fig.data) == 0
    assert any("No epochs yet" in a for a in _annotations(fig))

    partial = [{"epoch": 1, "train_loss": 0.9}, {"epoch": 2, "train_loss": float("nan")}]
    fig = charts.training_curves(partial, best_epoch=2)
    assert [t.name for t in fig.data] == ["train"]
    assert list(fig.data[0].y) == [0.9, None]  # NaN becomes a gap, not invalid JSON
    json.loads(fig.to_json())

    no_epochs = [{"train_loss": 1.0}, {"train_loss": 0.5}]
    assert list(charts.training_curves(no_epochs).data[0].x) == [1.0, 2.0]
    zero_based = [{"epoch": 0, "train_loss": 1.0}, {"epoch": 1, "train_loss": 0.5}]
    assert list(charts.training_curves(zero_based).data[0].x) == [0.0, 1.0]
    fig = charts.training_curves([{"epoch": 1, "note": "x"}])
    assert len(fig.data) == 0 and "no loss" in _annotations(fig)[0]


# ----------------------------------------------------------- confusion matrix
def test_confusion_matrix_heatmap_and_click_overlay() -> None:
    counts = [[5, 1, 0], [2, 7, 1], [0, 0, 0]]
    names = ["cat", "<b>x</b>", "a & b"]
    fig = charts.confusion_matrix(counts, names)
    heat, cells = fig.data
    assert heat.type == "heatmap" and cells.type == "scatter"
    assert np.array_equal(np.asarray(heat.z), counts)
    assert [list(r) for r in heat.text] == [["5", "1", "0"], ["2", "7", "1"], ["0", "0", "0"]]
    # one transparent, clickable marker per cell, customdata = [true, predicted]
    assert len(cells.x) == len(cells.y) == len(cells.customdata) == 9
    for x, y, (true, pred) in zip(cells.x, cells.y, cells.customdata, strict=True):
        assert (x, y) == (pred, true)
    assert cells.marker.opacity <= 0.05 and cells.marker.symbol == "square"
    assert cells.marker.size == charts.CELL_TARGET_PX  # tiny: see the hit-geometry tests
    assert cells.hoverinfo != "skip"  # "skip" would also switch off click events
    assert heat.hoverinfo == "skip"  # the only hover label is the cell a click opens
    assert fig.layout.clickmode == "event+select"
    assert fig.layout.hovermode == "closest" and fig.layout.hoverdistance == -1
    # escaped labels: the class named <b>x</b> shows its tags
    assert list(fig.layout.xaxis.ticktext) == ["cat", "&lt;b&gt;x&lt;/b&gt;", "a &amp; b"]
    assert list(fig.layout.yaxis.ticktext) == list(fig.layout.xaxis.ticktext)
    assert fig.layout.yaxis.autorange == "reversed"
    hover = cells.hovertext[3]  # true 1, predicted 0
    assert "True: &lt;b&gt;x&lt;/b&gt;" in hover and "Predicted: cat" in hover
    assert "Count: 2" in hover and "20.0%" in hover
    assert "<b>x" not in fig.to_json().replace("\\u003c", "<")


def test_confusion_matrix_normalized_and_validation() -> None:
    counts = [[3, 1], [0, 0]]
    fig = charts.confusion_matrix(counts, ["a", "b"], normalized=True)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), [[0.75, 0.25], [0.0, 0.0]])
    assert fig.data[0].zmax == 1
    assert [list(r) for r in fig.data[0].text] == [["75%", "25%"], ["0%", "0%"]]
    with pytest.raises(ValueError, match="2x2 matrix for 2 classes"):
        charts.confusion_matrix([[1, 2, 3]], ["a", "b"])
    many = [f"c{k}" for k in range(40)]
    fig = charts.confusion_matrix(np.eye(40, dtype=int), many)
    assert fig.data[0].text is None and fig.data[0].showscale is not False  # colour bar instead
    assert len(fig.data[1].customdata) == 1600


# ----------------------------------------------------------------- metric charts
def test_per_class_bars() -> None:
    m = _metrics(["cat", "dog", "<i>fox</i>"])
    fig = charts.per_class_bars(m["per_class"])
    assert [t.name for t in fig.data] == ["precision", "recall", "F1"]
    assert list(fig.data[0].x) == ["cat", "dog", "&lt;i&gt;fox&lt;/i&gt;"]
    assert list(fig.data[2].y) == [row["f1"] for row in m["per_class"]]
    assert list(fig.data[0].customdata) == [row["support"] for row in m["per_class"]]
    assert charts.per_class_bars([]).data == ()


def test_roc_and_pr_curves() -> None:
    names = ["cat", "dog", "fox"]
    m = _metrics(names)
    roc = charts.roc_curves(m["roc"], names)
    assert [t.name for t in roc.data] == [f"{n} (AUC {m['roc'][n]['auc']:.3f})" for n in names] + [
        "chance"
    ]
    assert list(roc.data[1].x) == m["roc"]["dog"]["fpr"]
    pr = charts.pr_curves(m["pr"], names)
    assert list(pr.data[0].x) == m["pr"]["cat"]["recall"]
    assert pr.data[0].name.startswith("cat (AP ")

    # a class without positives has no curve and is named in the subtitle
    m["roc"]["fox"]["auc"] = None
    fig = charts.roc_curves(m["roc"], names)
    assert len(fig.data) == 3 and "No curve for fox" in fig.layout.title.subtitle.text
    both = charts.roc_pr_curves(m["roc"], m["pr"], names)
    assert [t.name for t in both.data if t.showlegend is not False] == names + ["chance"]
    assert len([t for t in both.data if t.xaxis == "x2"]) == 3
    assert charts.roc_curves({}, names).data == ()


def test_reliability_diagram() -> None:
    cal = {
        "ece": 0.0423,
        "bins": [
            {"lo": 0.0, "hi": 0.5, "count": 0, "accuracy": None, "confidence": None},
            {"lo": 0.5, "hi": 0.75, "count": 4, "accuracy": 0.5, "confidence": 0.6},
            {"lo": 0.75, "hi": 1.0, "count": 6, "accuracy": 1.0, "confidence": 0.9},
        ],
    }
    fig = charts.reliability_diagram(cal)
    assert "ECE 4.2%" in fig.layout.title.text
    bars = _trace(fig, "accuracy")
    assert list(bars.x) == [0.625, 0.875] and list(bars.y) == [0.5, 1.0]
    assert list(_trace(fig, "mean confidence").y) == [0.6, 0.9]
    assert list(_trace(fig, "perfectly calibrated").x) == [0, 1]
    assert charts.reliability_diagram({"ece": 0, "bins": []}).data == ()


def test_class_distribution() -> None:
    counts = {"test": {"cat": 2}, "train": {"cat": 10, "<dog>": 7}, "val": {"cat": 3, "<dog>": 1}}
    fig = charts.class_distribution(counts)
    assert [t.name for t in fig.data] == ["train", "val", "test"]
    assert list(fig.data[0].x) == ["cat", "&lt;dog&gt;"]
    assert [list(t.y) for t in fig.data] == [[10, 7], [3, 1], [2, 0]]
    assert fig.layout.xaxis.type == "category"  # names like "1", "2" stay categories
    assert charts.class_distribution({}).data == ()


def test_lr_finder_curve() -> None:
    lrs = list(np.logspace(-6, 0, 30))
    losses = [2.0 - 0.05 * i if i < 20 else 1.0 + (i - 20) ** 2 for i in range(30)]
    fig = charts.lr_finder_curve(lrs, losses, suggested=1e-3)
    assert fig.layout.xaxis.type == "log"
    assert list(_trace(fig, "loss").y) == losses
    star = [t for t in fig.data if t.mode == "markers+text"]
    assert star and star[0].x == (1e-3,)
    assert "suggested 1.0e-03" in star[0].text[0]
    assert len(charts.lr_finder_curve(lrs, losses, None).data) == 1
    assert charts.lr_finder_curve([], [], None).data == ()


def test_run_comparison() -> None:
    other = [{"epoch": 1, "val_accuracy": 0.4}, {"epoch": 2, "val_accuracy": 0.6}]
    fig = charts.run_comparison({"baseline": HISTORY, "<script>": other}, "val_accuracy")
    assert [t.name for t in fig.data] == ["baseline", "&lt;script&gt;"]
    assert list(fig.data[1].y) == [0.4, 0.6]
    assert list(fig.data[0].x) == [1, 2, 3, 4]
    assert fig.layout.yaxis.tickformat == ".0%"
    empty = charts.run_comparison({"a": [{"epoch": 1}]}, "val_loss")
    assert empty.data == () and "No run has val_loss" in _annotations(empty)[0]


def test_one_look_for_every_chart() -> None:
    m = _metrics(["a", "b", "c"])
    figures = [
        charts.training_curves(HISTORY, 2),
        charts.confusion_matrix(m["confusion"], ["a", "b", "c"]),
        charts.per_class_bars(m["per_class"]),
        charts.roc_curves(m["roc"], ["a", "b", "c"]),
        charts.pr_curves(m["pr"], ["a", "b", "c"]),
        charts.reliability_diagram(m["calibration"]),
        charts.class_distribution({"train": {"a": 1}}),
        charts.lr_finder_curve([1e-4, 1e-3], [1.0, 0.5], 1e-4),
        charts.run_comparison({"r": HISTORY}, "val_loss"),
        charts.empty_figure("nothing"),
    ]
    for fig in figures:
        assert fig.layout.font.family == charts.FONT["family"]
        assert list(fig.layout.colorway) == charts.PALETTE
        assert fig.layout.height >= 240
        assert fig.layout.margin.l == charts.MARGIN["l"]
        json.loads(fig.to_json())


# -------------------------------------------------------------------- browser
@pytest.mark.e2e
def test_clicking_a_confusion_cell_reports_its_indices(tmp_path: Path) -> None:
    """In plotly.js, a click on a cell reaches the overlay with [true, pred]; hover shows names."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Chromium is missing: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    from plotly.offline import get_plotlyjs

    names = ["cat", "dog", "<b>fox</b>"]
    fig = charts.confusion_matrix([[5, 1, 0], [2, 7, 1], [0, 3, 4]], names)
    fig.update_layout(width=600, height=600)
    page_html = (
        "<html><body><div id='cm'></div><script>" + get_plotlyjs() + "</script><script>"
        "window.events = []; var f = " + fig.to_json() + ";"
        "Plotly.newPlot('cm', f.data, f.layout).then(function (gd) {"
        " gd.on('plotly_click', function (e) { window.events.push("
        "  e.points.map(function (p) { return [p.curveNumber, p.customdata]; })); }); });"
        "</script></body></html>"
    )
    path = tmp_path / "cm.html"
    path.write_text(page_html, encoding="utf-8")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 700, "height": 700})
            page.goto(path.as_uri())
            page.wait_for_selector("#cm .nsewdrag")
            box = page.locator("#cm .nsewdrag").first.bounding_box()
            # centre of the cell true=2 (bottom row), predicted=1 (middle column)
            x = box["x"] + box["width"] * 1.5 / 3
            y = box["y"] + box["height"] * 2.5 / 3
            page.mouse.move(x, y)
            page.wait_for_timeout(300)
            hover = page.evaluate("document.querySelector('#cm .hoverlayer').textContent")
            page.mouse.click(x, y)
            page.wait_for_timeout(300)
            events = page.evaluate("window.events")
        finally:
            browser.close()
    assert events == [[[1, [2, 1]]]]
    assert "True: <b>fox</b>" in hover and "Predicted: dog" in hover and "Count: 3" in hover
