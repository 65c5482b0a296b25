"""A click on the confusion matrix opens the cell under the pointer, also near its edges.

plotly.js picks the clicked point with its "closest" rule (scatter/hover.js and
fx/helpers.getClosest in the bundled plotly.min.js): a point's distance is
``max(dist - r, 1 - 3 / r)`` with ``r = max(3, marker size / 2)``, points within
``hoverdistance`` px qualify (-1: no cut-off), and on a tie the LAST point wins. The
emulation below applies that rule to the figure's own marker size and hoverdistance; a
real Chromium run checks the same clicks in plotly.js itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from finetune_core.reporting import charts

MIN_RADIUS = 3.0


def picked_cell(
    pointer: tuple[float, float], cell_px: float, c: int, marker_size: float, hoverdistance: float
) -> tuple[int, int] | None:
    """(true, predicted) of the point plotly.js picks for ``pointer`` (px from the top left)."""
    radius = max(MIN_RADIUS, marker_size / 2)
    limit = math.inf if hoverdistance == -1 else hoverdistance
    best, best_distance = None, limit
    for i in range(c):  # the overlay's points are row-major: (true i, predicted j)
        for j in range(c):
            cx, cy = (j + 0.5) * cell_px, (i + 0.5) * cell_px
            dist = math.hypot(pointer[0] - cx, pointer[1] - cy)
            d = max(dist - radius, 1 - MIN_RADIUS / radius)
            if d <= best_distance:  # getClosest: "<=", so the last tie wins
                best, best_distance = (i, j), d
    return best


def edge_pointers(
    cell_px: float, c: int, inset: float = 1.5, cell_h: float | None = None
) -> list[tuple[tuple[float, float], tuple[int, int]]]:
    """Pointers just inside every edge and corner of every cell, with the cell they are in
    (cells ``cell_px`` wide and ``cell_h`` high, square by default)."""
    h = cell_h or cell_px
    out = []
    for i in range(c):
        for j in range(c):
            x0, y0, x1, y1 = j * cell_px, i * h, (j + 1) * cell_px, (i + 1) * h
            xs = (x0 + inset, (x0 + x1) / 2, x1 - inset)
            ys = (y0 + inset, (y0 + y1) / 2, y1 - inset)
            out += [((x, y), (i, j)) for x in xs for y in ys]
    return out


def overlay(fig):  # noqa: ANN001, ANN201 - a plotly trace
    return next(t for t in fig.data if t.name == "cells")


@pytest.mark.parametrize(("c", "cell_px"), [(2, 180.0), (3, 40.0), (5, 12.0), (30, 7.0)])
def test_every_edge_click_opens_the_cell_under_the_pointer(c: int, cell_px: float) -> None:
    fig = charts.confusion_matrix([[1] * c for _ in range(c)], [f"c{k}" for k in range(c)])
    size, hoverdistance = overlay(fig).marker.size, fig.layout.hoverdistance
    wrong = [
        (pointer, cell, got)
        for pointer, cell in edge_pointers(cell_px, c)
        if (got := picked_cell(pointer, cell_px, c, size, hoverdistance)) != cell
    ]
    assert not wrong, wrong[:5]


def test_the_emulation_reproduces_the_old_bug() -> None:
    """Markers sized for a wider chart than drawn (v1: ~82 px on 60 px cells) overlap, and
    a click near the right or lower edge opened the next cell; the default 20 px hover
    distance also left the corners of big cells dead."""
    got = picked_cell((58.0, 30.0), 60.0, 3, marker_size=82.0, hoverdistance=20)
    assert got == (0, 1), "right edge of (0, 0) opened its neighbour"
    assert picked_cell((3.0, 3.0), 180.0, 2, marker_size=6, hoverdistance=20) is None


@pytest.mark.e2e
def test_edge_clicks_in_plotly_js_open_the_cell_under_the_pointer(tmp_path: Path) -> None:
    """The same clicks in headless Chromium, on a chart drawn narrower than it is tall."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Chromium is missing: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    from plotly.offline import get_plotlyjs

    c = 3
    fig = charts.confusion_matrix([[5, 1, 0], [2, 7, 1], [0, 3, 4]], ["cat", "dog", "fox"])
    fig.update_layout(width=360)  # cells smaller than the height alone suggests
    page_html = (
        "<html><body style='margin:0'><div id='cm'></div><script>" + get_plotlyjs() + "</script>"
        "<script>window.events = []; var f = " + fig.to_json() + ";"
        "Plotly.newPlot('cm', f.data, f.layout).then(function (gd) {"
        " gd.on('plotly_click', function (e) { window.events.push("
        "  e.points.map(function (p) { return p.customdata; })); }); });"
        "</script></body></html>"
    )
    path = tmp_path / "cm.html"
    path.write_text(page_html, encoding="utf-8")
    got, expected = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(chromium),
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 420, "height": 700})
            page.goto(path.as_uri())
            page.wait_for_selector("#cm .nsewdrag")
            box = page.locator("#cm .nsewdrag").first.bounding_box()
            assert box is not None
            cell_w, cell_h = box["width"] / c, box["height"] / c
            assert cell_w < 100, "the drawn cells are smaller than v1's markers (~82 px)"
            for (x, y), cell in edge_pointers(cell_w, c, inset=3, cell_h=cell_h):
                page.evaluate("window.events = []")
                page.mouse.move(box["x"] + x, box["y"] + y)
                page.wait_for_timeout(80)  # plotly.js updates its hover point at most every 50 ms
                page.mouse.click(box["x"] + x, box["y"] + y)
                page.wait_for_timeout(40)
                events = page.evaluate("window.events")
                got.append(events[0][0] if events else None)
                expected.append(list(cell))
        finally:
            browser.close()
    assert got == expected
