"""The standalone HTML report: escaping, no external resources, size, and a real browser."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune_core.evaluation.metrics import compute_metrics
from finetune_core.reporting.report import (
    GALLERY_LIMIT,
    ReportData,
    make_thumbnail,
    render_report,
    write_report,
)

ARTIFACTS = Path(__file__).resolve().parents[3] / "artifacts"
HOSTILE = "</script><script>alert(1)</script>"


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    """Real handwritten digits (8x8, bundled with scikit-learn), as 0-255 arrays."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images * (255 / 16)).astype(np.uint8), digits.target


def _history(epochs: int = 8) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        rows.append(
            {
                "epoch": e,
                "train_loss": 1.9 * 0.72**e + 0.08,
                "val_loss": 1.8 * 0.75**e + 0.2 + (0.04 * (e - 6) if e > 6 else 0),
                "train_accuracy": 1 - 0.8 * 0.7**e,
                "val_accuracy": 1 - 0.8 * 0.74**e - 0.05,
                "lr": 1e-3 * (0.5 if e == 1 else 1.0) * 0.8 ** max(0, e - 2),
                "phase": "frozen" if e == 1 else "unfrozen",
            }
        )
    return rows


def _report_data(
    class_names: list[str],
    n_val: int,
    *,
    image_for=None,
    seed: int = 0,
    with_test: bool = True,
) -> ReportData:
    rng = np.random.default_rng(seed)
    c = len(class_names)
    metrics, gallery = {}, []
    for split, n in (("val", n_val), ("test", n_val // 2)):
        if split == "test" and not with_test:
            continue
        y = rng.integers(0, c, size=n)
        logits = rng.normal(size=(n, c)) * 1.5
        logits[np.arange(n), y] += 3.0
        probs = _softmax(logits)
        paths = [f"{class_names[y[i]]}/img_{i:04d}.png" for i in range(n)]
        metrics[split] = compute_metrics(y, probs, class_names, paths=paths)
        pred = probs.argmax(axis=1)
        for i in np.nonzero(pred != y)[0]:
            img = image_for(i, y[i]) if image_for else Image.new("RGB", (40, 40), (200, 90, 40))
            gallery.append(
                {
                    "thumbnail_png": make_thumbnail(img),
                    "true": class_names[y[i]],
                    "pred": class_names[pred[i]],
                    "prob_pred": float(probs[i, pred[i]]),
                    "prob_true": float(probs[i, y[i]]),
                    "split": split,
                }
            )
    return ReportData(
        run_name="resnet18 · finetune",
        run_id="r-20250101-abcd",
        created_at="2025-01-01 10:00 UTC",
        finished_at="2025-01-01 10:07 UTC",
        creator="ana",
        status="SUCCEEDED",
        dataset_name="digits",
        dataset_fingerprint="sha256:9f2c4e1ab7d3",
        health_summary=[
            {"severity": "warning", "message": "Exact duplicate images", "count": 3},
            {"severity": "info", "message": "Images smaller than 64 px", "count": 120},
        ],
        model="resnet18",
        strategy="finetune",
        config={"model": "resnet18", "lr": 0.001, "epochs": 8, "batch_size": 32, "seed": 0},
        environment={
            "python": "3.11.7",
            "torch": "2.14.1",
            "torchvision": "0.29.1",
            "device": "cpu",
        },
        duration_seconds=421.5,
        history=_history(),
        best_epoch=6,
        metrics=metrics,
        class_names=list(class_names),
        split_counts={
            "train": {n: 140 + 7 * k for k, n in enumerate(class_names)},
            "val": {n: 30 for n in class_names},
            "test": {n: 15 for n in class_names},
        },
        gallery=gallery,
        notes="First try with the default recipe.\nLooks good.",
        export_checks=[
            {"format": "torchscript", "passed": True, "max_abs_diff": 2.4e-7, "tolerance": 1e-4},
            {"format": "onnx", "passed": True, "max_abs_diff": 1.1e-6, "tolerance": 1e-4},
        ],
        generated_at="2025-01-01 10:08 UTC",
    )


def _digits_report() -> ReportData:
    images, targets = _digit_images()
    by_class = {k: np.nonzero(targets == k)[0] for k in range(10)}

    def image_for(i: int, true: int) -> Image.Image:
        idx = by_class[int(true)][i % len(by_class[int(true)])]
        return Image.fromarray(255 - images[idx]).resize((64, 64), Image.Resampling.BICUBIC)

    names = [
        "zero",
        "one",
        "two",
        "<b>three</b>",  # shown literally, proving the escaping in the screenshot
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
    ]
    return _report_data(names, 300, image_for=image_for)


# ------------------------------------------------------------------- escaping
def test_hostile_names_are_escaped_everywhere() -> None:
    names = [HOSTILE, "\"quoted\" & 'single'", "<b>bold</b>", "日本語 ünïcødé 🐱"]
    data = _report_data(names, 60, seed=1)
    data.run_name = HOSTILE
    data.dataset_name = "<img src=x onerror=alert(2)>"
    data.notes = "<script>alert(3)</script>"
    data.creator = "<i>eve</i>"
    data.config["name"] = HOSTILE
    data.health_summary.append({"severity": "<b>", "message": HOSTILE, "count": 1})
    data.export_checks.append({"format": HOSTILE, "passed": False, "max_abs_diff": 1.0})
    out = render_report(data)

    assert HOSTILE not in out
    assert "<script>alert" not in out
    assert "<img src=x" not in out
    assert "<i>eve</i>" not in out
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&lt;img src=x onerror=alert(2)&gt;" in out
    assert "&lt;i&gt;eve&lt;/i&gt;" in out
    # the template escapes with MarkupSafe, which writes quotes as numeric entities
    assert "&#34;quoted&#34; &amp; &#39;single&#39;" in out
    assert "日本語 ünïcødé 🐱" in out
    # exactly our three <script> elements: plotly.js, the figure JSON, the renderer
    assert len(re.findall(r"<script\b", out, flags=re.I)) == 3
    assert len(re.findall(r"</script", out, flags=re.I)) == 3
    # the class names inside the figure JSON are escaped for plotly and cannot close the tag
    figures = out.split("id='figures'>", 1)[1].split("</script>", 1)[0]
    assert "</" not in figures
    decoded = json.dumps(json.loads(figures), ensure_ascii=False)
    assert "&lt;b&gt;bold&lt;/b&gt;" in decoded and "<b>bold" not in decoded
    assert "&lt;/script&gt;" in decoded and "</script>" not in decoded


def test_no_external_resources_and_no_absolute_paths(tmp_path: Path) -> None:
    data = _report_data(["cat", "dog", "fox"], 60)
    data.config["weights"] = str(tmp_path / "secret" / "weights.pt")
    data.config["dataset"] = str(tmp_path / "data")
    data.environment["executable"] = "/usr/local/bin/python3"
    data.dataset_name = str(tmp_path / "my_images")
    data.health_summary.append(
        {"severity": "error", "message": f"Corrupt file {tmp_path}/cat/1.jpg", "count": 1}
    )
    out = render_report(data)
    assert str(tmp_path) not in out
    assert "/usr/local/bin" not in out
    assert "…/weights.pt" in out and "…/my_images" in out and "…/1.jpg" in out
    # no tag loads anything from elsewhere: no src/href except data: URIs and in-page anchors
    for tag in re.findall(r"<(?:script|link|img|iframe|source|video|audio)\b[^>]*>", out, re.I):
        for attr in re.findall(r"\b(?:src|href)\s*=\s*['\"]?([^'\" >]+)", tag, re.I):
            assert attr.startswith("data:"), tag[:120]
    assert not re.search(r"<link\b", out, re.I)
    assert not re.search(r"<script[^>]+src=", out, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?https?:", out.split("<script>", 1)[0], re.I)


def test_sections_and_values() -> None:
    data = _report_data(["cat", "dog", "fox"], 90)
    out = render_report(data)
    for anchor in ("dataset", "model", "training", "metrics", "confusion", "errors"):
        assert f"<section id='{anchor}'>" in out
    for anchor in ("calibration", "curves", "export", "notes"):
        assert f"<section id='{anchor}'>" in out
    val = data.metrics["val"]
    assert f"{val['accuracy']:.1%}" in out
    assert "sha256:9f2c4e1ab7d3" in out
    assert "7 min 02 s" in out  # 421.5 s
    assert "Exact duplicate images" in out
    assert "torchscript" in out and "2.40e-07" in out
    assert out.count("<figure class='thumb'>") == min(GALLERY_LIMIT, len(data.gallery))
    assert "First try with the default recipe.\nLooks good." in out
    # one chart div per figure, and the figure JSON names each of them
    ids = re.findall(r"<div class='chart' id='(fig-\d+)'", out)
    assert len(ids) >= 8
    figures = out.split("id='figures'>", 1)[1].split("</script>", 1)[0]
    for div_id in ids:
        assert f'"{div_id}":' in figures


def test_empty_run_still_renders() -> None:
    out = render_report(ReportData(run_name="queued run", status="QUEUED"))
    assert "queued run" in out and "QUEUED" in out
    assert "This run has no evaluation." in out
    assert "No misclassified images." in out
    assert "No exported models were verified" in out
    assert "No epochs yet" in out  # the training-curves figure explains itself
    assert "href='#training'" in out and "href='#confusion'" not in out  # nav: rendered only


def test_make_thumbnail_formats() -> None:
    for mode, color in (("RGB", (1, 2, 3)), ("RGBA", (9, 9, 9, 0)), ("L", 128), ("I;16", 4000)):
        img = Image.new(mode, (300, 150), color)
        data = make_thumbnail(img, size=96)
        thumb = Image.open(io.BytesIO(data))
        assert thumb.format == "JPEG" and thumb.mode == "RGB"
        assert thumb.size == (96, 48)
    # a transparent pixel becomes white, not black
    thumb = Image.open(io.BytesIO(make_thumbnail(Image.new("RGBA", (20, 20), (0, 0, 0, 0)))))
    assert thumb.getpixel((5, 5))[0] > 240
    with pytest.raises(ValueError, match="at least 8 pixels"):
        make_thumbnail(Image.new("RGB", (20, 20)), size=2)


def test_write_report_is_atomic_and_small_for_1000_images(tmp_path: Path) -> None:
    """1,000 validation images, 10 classes, noisy thumbnails (JPEG's worst case): < 10 MB."""
    rng = np.random.default_rng(3)
    names = [f"class_{k}" for k in range(10)]

    def noise(i: int, true: int) -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, size=(128, 128, 3), dtype=np.uint8))

    data = _report_data(names, 1000, image_for=noise, seed=3)
    assert len(data.gallery) > GALLERY_LIMIT  # the cap is what keeps it small
    path = write_report(data, tmp_path / "run" / "report.html")
    size = path.stat().st_size
    assert size < 10 * 1024 * 1024, f"report is {size / 1e6:.1f} MB"
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file left
    text = path.read_text(encoding="utf-8")
    assert text.count("<figure class='thumb'>") == GALLERY_LIMIT
    assert f"The report shows {GALLERY_LIMIT} of the {len(data.gallery)} mistakes" in text


def test_failed_render_keeps_the_previous_report(tmp_path: Path) -> None:
    target = write_report(ReportData(run_name="first"), tmp_path / "report.html")
    before = target.read_bytes()
    broken = ReportData(run_name="second", gallery=[{"thumbnail_png": "not bytes"}])
    with pytest.raises(TypeError):
        write_report(broken, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


# -------------------------------------------------------------------- browser
@pytest.mark.e2e
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Chromium is missing: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")

    data = _digits_report()
    path = write_report(data, tmp_path / "report.html")

    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(chromium),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri())
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 8")
            plots = page.locator(".js-plotly-plot").count()
            heatmaps = page.locator(".js-plotly-plot .heatmaplayer image").count()
            thumbs = page.eval_on_selector_all(
                ".gallery img",
                "els => els.filter(e => e.src.startsWith('data:image/') "
                "&& e.complete && e.naturalWidth > 0).length",
            )
            captions = page.locator(".gallery figcaption").first.inner_text()
            tick_text = page.eval_on_selector_all(
                "#confusion .xtick text", "els => els.map(e => e.textContent)"
            )
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()

    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert plots >= 8
    assert heatmaps >= 2  # validation and test confusion matrices
    assert thumbs == GALLERY_LIMIT or thumbs == len(data.gallery)
    assert "true" in captions and "pred" in captions and "%" in captions
    assert "<b>three</b>" in tick_text  # shown literally, not as bold "three"


def test_thumbnails_are_embedded_as_data_uris() -> None:
    data = _report_data(["cat", "dog"], 40)
    out = render_report(data)
    uris = re.findall(r"src='data:image/jpeg;base64,([A-Za-z0-9+/=]+)'", out)
    assert len(uris) == min(GALLERY_LIMIT, len(data.gallery)) > 0
    img = Image.open(io.BytesIO(base64.b64decode(uris[0])))
    assert img.size == (40, 40)  # small images are not upscaled
