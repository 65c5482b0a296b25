"""The report's Jinja2 template: hostile strings come out as text, the page parses into its
sections with their values, and the template files ship inside the installed package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest
from test_report import _report_data

from finetune_core.evaluation.honesty import headline, split_honesty
from finetune_core.reporting.report import ReportData, render_report, template_environment

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = "<script>alert(1)</script>"
BREAKOUT = '"><img src=x onerror=alert(2)>'
SINGLE = "'><svg onload=alert(3)>"
TEMPLATE_LIKE = "{{7*7}}{% if 1 %}x{% endif %}"
HOSTILE_CLASSES = [SCRIPT, BREAKOUT, SINGLE, TEMPLATE_LIKE]
VOID = {"meta", "img", "br", "hr", "link", "input"}


class Page(HTMLParser):
    """What a browser would build: elements with attributes and text, nesting checked."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict] = []  # {tag, attrs, text, section}
        self.stack: list[dict] = []
        self.section = ""
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "section": self.section}
        if tag == "section":
            self.section = element["section"] = element["attrs"].get("id") or ""
        self.elements.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1]["tag"] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1]['tag'] if self.stack else None}")
            return
        self.stack.pop()
        if tag == "section":
            self.section = ""

    def handle_data(self, data: str) -> None:
        for element in self.stack:
            element["text"] += data

    def find(self, tag: str, **where: str) -> list[dict]:
        return [
            e
            for e in self.elements
            if e["tag"] == tag
            and all(
                e["section"] == v if k == "section" else e["attrs"].get(k) == v
                for k, v in where.items()
            )
        ]

    def texts(self, tag: str, **where: str) -> list[str]:
        return [e["text"].strip() for e in self.find(tag, **where)]


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    assert page.errors == [] and [e["tag"] for e in page.stack] == []
    return page


def hostile_report() -> ReportData:
    data = _report_data(HOSTILE_CLASSES, 80, seed=5)
    data.run_name = TEMPLATE_LIKE + BREAKOUT  # no "/": path scrubbing would shorten it
    data.notes = f"{SCRIPT}\n{BREAKOUT}\n{TEMPLATE_LIKE}"
    data.dataset_name = BREAKOUT
    data.config["augment"] = SINGLE
    data.health_summary.append({"severity": "warning", "message": BREAKOUT, "count": 2})
    data.export_checks.append({"format": BREAKOUT, "passed": False, "max_abs_diff": 0.5})
    return data


def test_hostile_strings_are_text_not_markup() -> None:
    data = hostile_report()
    html = render_report(data)
    for raw in ("<script>alert", "<img src=x", "<svg onload", "onerror=alert(2)>"):
        assert raw not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&#39;&gt;&lt;svg onload=alert(3)&gt;" in html
    # template syntax in a value is printed, never evaluated
    assert TEMPLATE_LIKE in html and "<h1>49" not in html and "49x" not in html

    page = parse(html)
    # only our own elements: three scripts, the gallery's images, nothing injected
    assert len(page.find("script")) == 3
    assert not page.find("svg")
    assert all(set(e["attrs"]) == {"src", "alt"} for e in page.find("img"))
    assert all(e["attrs"]["src"].startswith("data:image/jpeg;base64,") for e in page.find("img"))
    assert not [e for e in page.elements for a in e["attrs"] if a.startswith("on")]
    # ...and the browser shows each hostile string exactly as the user typed it
    assert page.texts("h1")[0].startswith(data.run_name)
    assert page.texts("title")[0].startswith(data.run_name)
    assert page.texts("p", **{"class": "notes"}) == [data.notes]
    for split_title in ("Validation", "Test"):
        assert split_title in page.texts("h3", section="metrics")
    classes = page.texts("td", **{"class": "cls"}, section="metrics")
    assert classes == HOSTILE_CLASSES * 2  # validation and test tables
    alts = {e["attrs"]["alt"] for e in page.find("img")}
    expected = {f"true {g['true']}, predicted {g['pred']}" for g in data.gallery}
    assert alts and alts <= expected
    titles = {e["attrs"]["title"] for e in page.find("b", section="errors")}
    assert titles <= set(HOSTILE_CLASSES) and len(titles) >= 2
    assert BREAKOUT in page.texts("td", section="dataset")
    assert SINGLE in page.texts("td", **{"class": "mono"}, section="model")
    assert BREAKOUT in page.texts("td", section="export")
    # plotly gets the class names HTML-escaped (it renders a subset of HTML itself)
    figures = json.loads(page.texts("script", id="figures")[0])
    ticks = figures["fig-3"]["layout"]["xaxis"]["ticktext"]
    assert ticks[0].startswith("&lt;script&gt;alert(1)") and "<" not in "".join(ticks)


def test_the_page_has_its_sections_and_values() -> None:
    data = _report_data(["cat", "dog", "fox"], 90)
    page = parse(render_report(data))
    sections = [e["attrs"]["id"] for e in page.find("section")]
    assert sections == [
        "dataset",
        "model",
        "training",
        "metrics",
        "confusion",
        "errors",
        "calibration",
        "curves",
        "export",
        "notes",
    ]
    links = [e["attrs"]["href"] for e in page.find("a")]
    assert links == [f"#{s}" for s in sections]
    assert page.texts("h2") == [
        "Dataset",
        "Model and configuration",
        "Training",
        "Metrics",
        "Confusion matrix",
        "Errors",
        "Calibration",
        "ROC and precision-recall",
        "Export verification",
        "Notes",
    ]
    status = page.find("span", **{"class": "status status-succeeded"})
    assert [s["text"] for s in status] == ["SUCCEEDED"]
    facts = dict(zip(page.texts("dt"), page.texts("dd"), strict=True))
    assert facts == {
        "Run ID": "r-20250101-abcd",
        "Created": "2025-01-01 10:00 UTC",
        "Finished": "2025-01-01 10:07 UTC",
        "Creator": "ana",
        "Duration": "7 min 02 s",
    }

    def cards(section: str = "") -> dict[str, list[str]]:
        """Card title -> the values shown under it, in page order."""
        found: dict[str, list[str]] = {}
        els = page.elements
        for i, e in enumerate(els):
            if e["attrs"].get("class") in ("card", "card small") and e["section"] == section:
                value, key = els[i + 1]["text"].strip(), els[i + 2]["text"].strip()
                found.setdefault(key, []).append(value)
        return found

    val, test = data.metrics["val"], data.metrics["test"]
    overview = cards()
    assert overview["Validation accuracy (optimistic)"] == [f"{val['accuracy']:.1%}"]
    assert overview["Test accuracy (held out)"] == [f"{test['accuracy']:.1%}"]
    assert overview["Test macro F1"] == [f"{test['macro']['f1']:.1%}"]
    assert overview["Model"] == ["resnet18"]
    # The headline is the test split's, with its interval and baseline.
    assert page.texts("p", **{"class": "headline-text"}) == [
        headline({"splits": data.metrics}).text
    ]
    metrics = cards("metrics")
    assert metrics["Accuracy (optimistic)"] == [f"{val['accuracy']:.1%}"]
    assert metrics["Accuracy (held out)"] == [f"{test['accuracy']:.1%}"]
    notes = [e["text"] for e in page.find("div", **{"class": "n"})]
    assert notes[0] == (
        f"{split_honesty({'splits': data.metrics}, 'val').interval_text} · "
        f"{split_honesty({'splits': data.metrics}, 'val').baseline_text}"
    )
    assert page.texts("p", **{"class": "honesty"}) == [
        split_honesty({"splits": data.metrics}, s).text for s in ("val", "test")
    ]
    assert metrics["Log loss"] == [f"{val['log_loss']:.3f}", f"{test['log_loss']:.3f}"]
    assert metrics["Images"] == [str(val["n"]), str(test["n"])]
    assert cards("training") == {
        "Epochs run": ["8"],
        "Best epoch": ["6"],
        "Duration": ["7 min 02 s"],
    }
    rows = page.find("tr", section="metrics")
    bars = [e for e in page.find("td", section="metrics") if e["attrs"].get("class") == "barcell"]
    assert len(bars) == 3 * 3 * 2 and len(rows) == 2 * (1 + 3)
    cat = val["per_class"][0]
    assert bars[0]["text"] == f"{cat['precision']:.3f}"
    assert bars[0]["attrs"]["style"] == f"--v:{cat['precision'] * 100:.1f}%"
    exports = page.texts("td", section="export")
    assert exports[:4] == ["torchscript", "passed", "2.40e-07", "1.00e-04"]
    kv = dict(
        zip(page.texts("th", section="model"), page.texts("td", section="model"), strict=True)
    )
    assert kv["Model"] == "resnet18" and kv["lr"] == "0.001" and kv["torch"] == "2.14.1"
    charts = page.find("div", **{"class": "chart"})
    figures = json.loads(page.texts("script", id="figures")[0])
    assert [c["attrs"]["id"] for c in charts] == list(figures)
    # the stylesheet is the package's report.css, inlined byte for byte
    css = resources.files("finetune_core.reporting") / "templates" / "report.css"
    assert page.texts("style")[0] == css.read_text(encoding="utf-8").strip()


def test_autoescaping_is_on_for_the_report_template() -> None:
    env = template_environment()
    template = env.get_template("report.html.j2")
    assert template.environment.autoescape("report.html.j2")
    assert env.from_string("{{ x }}").render(x="<b>") == "&lt;b&gt;"
    with pytest.raises(Exception, match="undefined"):
        env.from_string("{{ missing.attr }}").render()


@pytest.mark.slow
def test_templates_ship_in_the_installed_package(tmp_path: Path) -> None:
    """A wheel built from the project carries the templates, and a report renders from it
    in a process that cannot see this checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "finetune_core",
        src / "finetune_core",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    built = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta; "
            "print(build_meta.build_wheel(sys.argv[1]))",
            str(tmp_path / "dist"),
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = tmp_path / "dist" / built.stdout.strip().splitlines()[-1]
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(site)
    for name in ("report.html.j2", "_macros.html.j2", "report.css", "report.js"):
        assert f"finetune_core/reporting/templates/{name}" in names

    probe = (
        "import finetune_core, sys\n"
        "from finetune_core.reporting.report import ReportData, render_report\n"
        "html = render_report(ReportData(run_name='installed <ok>', notes='n'))\n"
        "print(finetune_core.__file__)\n"
        "print('&lt;ok&gt;' in html and '.cards {' in html and 'Plotly.newPlot' in html)\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ran = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=elsewhere,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    location, ok = ran.stdout.split()
    assert Path(location).is_relative_to(site) and ok == "True"
