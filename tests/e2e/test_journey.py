"""A newcomer's first model, from a zip of images to a verified export; then a teammate
opens the run's permalink and sees the same numbers."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from finetune_core.data import make_demo_folder
from tests.helpers.e2e import (
    CURVES_JS,
    alerts,
    choose_segment,
    click_button,
    curve_lengths,
    file_input,
    go_to,
    main,
    metric_value,
    open_app,
    run_id_from_url,
    select_option,
    selected_option,
    set_number,
    wait_idle,
    wait_text,
    watch_training,
    widget,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLASSES = ("circle", "square", "triangle")  # make_demo_folder's first three shapes
PER_CLASS = 12
PROBE = "Linear probe (frozen backbone, cached features)"
FINETUNE = "Fine-tune (head first, then everything)"

# What the newcomer test leaves for the teammate test (same module, same server).
shared: dict[str, object] = {}

EPOCHS = 60  # probe epochs on cached features are cheap; enough to watch live


def make_zip(folder: Path) -> Path:
    """A zip with one folder per class of 40 px JPEGs, as a user would pack it."""
    images = make_demo_folder(folder / "shapes", classes=len(CLASSES), per_class=PER_CLASS, size=40)
    archive = folder / "shapes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(images.rglob("*.jpg")):
            zf.write(path, f"shapes/{path.relative_to(images).as_posix()}")
    return archive


HEATMAP_TEXT_JS = """() => {
    const gd = [...document.querySelectorAll('[data-testid="stMain"] .js-plotly-plot')]
        .find(g => (g.data || []).some(t => t.type === 'heatmap'));
    return gd ? gd.data.find(t => t.type === 'heatmap').text : null;
}"""


def confusion_counts(page) -> list[list[int]]:
    """The confusion matrix as its cells show it, once plotly has drawn it (z travels
    base64-encoded; the cell text is plain numbers)."""
    page.wait_for_function(HEATMAP_TEXT_JS, timeout=30_000)
    return [[int(v) for v in row] for row in page.evaluate(HEATMAP_TEXT_JS)]


def click_cell(page, true_index: int, pred_index: int, classes: int) -> None:
    """Click the centre of a confusion-matrix cell. The plot area is the heatmap's drag
    layer; rows run top to bottom (the y axis is reversed)."""
    chart = main(page).locator('[data-testid="stPlotlyChart"]').first
    chart.scroll_into_view_if_needed()
    area = chart.locator(".draglayer .nsewdrag").first.bounding_box()
    assert area, "the confusion matrix has no plot area"
    x = area["x"] + (pred_index + 0.5) * area["width"] / classes
    y = area["y"] + (true_index + 0.5) * area["height"] / classes
    page.mouse.click(x, y)
    wait_idle(page)


def test_newcomer_journey(app_server, page, shot, tmp_path: Path) -> None:
    archive = make_zip(tmp_path)

    # Home, then Data: upload the zip through the file chooser.
    open_app(page, app_server, "/")
    wait_text(page, "Train a quick demo model")
    shot(page, "01-home")
    go_to(page, "Data")
    file_input(page, "Zip archive").set_input_files(str(archive))
    wait_text(page, "shapes.zip")
    wait_idle(page)
    click_button(page, "Import zip")
    wait_text(page, f"Imported {len(CLASSES) * PER_CLASS} images in {len(CLASSES)} classes")
    wait_text(page, "Health report")
    assert metric_value(page, "Images") == str(len(CLASSES) * PER_CLASS)
    assert metric_value(page, "Classes") == str(len(CLASSES))
    wait_text(page, "No problems found")
    # The gallery shows the first class's pictures, really decoded by the browser.
    wait_text(page, f"{PER_CLASS} image(s)")
    pictures = main(page).locator('[data-testid="stImage"] img')
    pictures.nth(PER_CLASS - 1).scroll_into_view_if_needed()
    page.wait_for_function(
        """n => [...document.querySelectorAll('[data-testid="stImage"] img')]
                 .filter(img => img.complete && img.naturalWidth > 0).length >= n""",
        arg=PER_CLASS,
    )
    assert main(page).get_by_text(re.compile(r"^train · circle_0000\.jpg$")).count() == 1
    shot(page, "02-data-health-gallery")

    # Setup: resnet18, the Quick preset; Recommended is there and changes the strategy.
    go_to(page, "Setup")
    main(page).get_by_text("Advanced settings", exact=True).click()
    wait_idle(page)
    choose_segment(page, "Strategy preset", "Quick")
    assert selected_option(page, "Strategy") == PROBE
    wait_text(page, "Linear probe: the pretrained backbone stays frozen")
    choose_segment(page, "Strategy preset", "Recommended")
    assert selected_option(page, "Strategy") == FINETUNE
    wait_text(page, "fastai-style fine-tune")
    shot(page, "03-setup-recommended")
    choose_segment(page, "Strategy preset", "Quick")
    assert selected_option(page, "Strategy") == PROBE
    select_option(page, "Architecture", "resnet18")
    assert selected_option(page, "Architecture") == "resnet18"
    main(page).get_by_text("None (random initialisation)", exact=True).click()
    wait_idle(page)
    set_number(page, "Image size (px)", 64)
    set_number(page, "Epochs", EPOCHS)
    # Small batches, augmented views and many (cheap) probe epochs: seconds of work on a
    # quiet machine, yet several 2 s refreshes of the live view land mid-run.
    set_number(page, "Batch size", 2)
    # Advanced settings stayed open while the offline-weights message above went away.
    views = widget(page, "stNumberInput", "Augmented views per image").locator("input")
    assert views.is_visible()
    set_number(page, "Augmented views per image", 8)
    assert alerts(page, "Error") == []
    wait_text(page, f"× {EPOCHS} epochs")
    shot(page, "04-setup-quick")
    click_button(page, "Start training", wait=False)

    # Training: the live view moves while the run trains, then it finishes.
    page.wait_for_url(re.compile(r"/training\?run=r-"))
    run_id = run_id_from_url(page.url)
    readings = watch_training(page)
    live = [r for r in readings if not r["finished"] and r["text"]]
    distinct = {(r["text"], r["value"], r["points"]) for r in live}
    print(f"{len(distinct)} distinct live readings of {len(readings)}: {sorted(distinct)}")
    assert len(distinct) >= 2, f"the live view did not change while training: {live}"
    assert any(r["points"] for r in live), f"no curve drawn while training: {live}"
    wait_idle(page)
    wait_text(page, "Succeeded")
    page.wait_for_function(f"() => ({CURVES_JS})().val >= 3", timeout=30_000)
    lengths = curve_lengths(page)
    # early stopping may end the run before EPOCHS; every epoch run has both points
    assert lengths.get("train") == lengths.get("val") and lengths["val"] >= 3, lengths
    shot(page, "05-training-finished")

    # Evaluation: the confusion matrix; a clicked cell shows its images.
    main(page).get_by_role("link", name=re.compile("Open the evaluation")).click()
    page.wait_for_url(re.compile(rf"/evaluation\?run={run_id}"))
    wait_idle(page)
    accuracy = metric_value(page, "Accuracy")
    assert re.fullmatch(r"\d{1,3}\.\d%", accuracy), accuracy
    cells = confusion_counts(page)
    heatmaps = page.evaluate(
        """() => [...document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')]
                 .filter(gd => (gd.data || []).some(t => t.type === 'heatmap')).length"""
    )
    assert heatmaps == 1
    shot(page, "06-evaluation")
    split_images = int(re.search(r"\((\d+) images\)", main(page).inner_text()).group(1))
    assert sum(map(sum, cells)) == split_images
    # The fullest cell, so there are images to see.
    i, j = max(((i, j) for i in range(3) for j in range(3)), key=lambda c: cells[c[0]][c[1]])
    click_cell(page, i, j, len(CLASSES))
    wait_text(page, re.compile(rf"^True {CLASSES[i]}, predicted {CLASSES[j]}$"))
    heading = main(page).locator('[data-testid="stMarkdownContainer"]')
    heading = heading.filter(has_text=re.compile(rf"^True {CLASSES[i]}, predicted {CLASSES[j]}"))
    assert f"· {cells[i][j]} image(s)" in heading.first.inner_text()
    cell_images = main(page).get_by_text(re.compile(r"^p\(\w+\) \d\.\d\d"))
    assert cell_images.count() == cells[i][j]
    shot(page, "07-evaluation-cell")

    # The HTML report downloads and shows the confusion matrix on its own.
    with page.expect_download() as report_download:
        click_button(page, "Download report")
    report_path = tmp_path / "report.html"
    report_download.value.save_as(report_path)
    assert report_path.stat().st_size > 10_000
    report = page.context.new_page()
    report.goto(report_path.as_uri())
    report.wait_for_function(
        """() => [...document.querySelectorAll('.js-plotly-plot')]
                 .some(gd => (gd.data || []).some(t => t.type === 'heatmap'))""",
        timeout=30_000,
    )
    assert report.locator(".js-plotly-plot .heatmaplayer").count() >= 1
    assert "Confusion matrix" in report.locator("body").inner_text()
    shot(report, "08-report")
    report.close()

    # Export: verified, and the zip says so.
    click_button(page, "Export and verify", timeout=120)
    verified = wait_text(page, re.compile(r"^Verified: the "), timeout=120)
    assert "export matches the PyTorch model" in verified.inner_text()
    with page.expect_download() as export_download:
        click_button(page, "Download checkpoint (state_dict)")
    export_path = tmp_path / "export.zip"
    export_download.value.save_as(export_path)
    with zipfile.ZipFile(export_path) as zf:
        names = zf.namelist()
        verification = [n for n in names if n.endswith("/verification.json")]
        assert len(verification) == 1, names
        check = json.loads(zf.read(verification[0]))
    assert check["passed"] is True
    assert check["format"] == "checkpoint"
    shot(page, "09-export")

    # The permalink the page offers, for a teammate.
    main(page).get_by_role("button", name=re.compile("Permalink")).click()
    link = wait_text(page, re.compile(rf"^http\S+/evaluation\?run={run_id}$")).inner_text().strip()
    page.keyboard.press("Escape")
    shared.update(run_id=run_id, accuracy=accuracy, cells=cells, link=link)


def test_teammate_opens_permalink(app_server, new_page, shot) -> None:
    if "run_id" not in shared:
        pytest.skip("needs the run of test_newcomer_journey (run the whole module)")
    page = new_page()  # a second browser context: another person, no shared session
    assert str(shared["link"]).startswith(app_server.url), shared["link"]
    page.goto(str(shared["link"]))
    wait_idle(page)
    assert selected_option(page, "Run").endswith(shared["run_id"])
    assert metric_value(page, "Accuracy") == shared["accuracy"]
    assert confusion_counts(page) == shared["cells"]
    shot(page, "evaluation")
