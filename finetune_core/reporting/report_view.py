"""ReportData turned into what the report template places: display strings, table rows,
chart placeholders and the figures' JSON.

Values stay plain text here; the template escapes every one of them. The only markup
this module hands over is the figures' JSON, marked safe in ``report_context``.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import plotly.graph_objects as go
from markupsafe import Markup

from finetune_core.evaluation.honesty import SplitHonesty, headline, split_honesty
from finetune_core.reporting import charts
from finetune_core.reporting.report_data import GALLERY_LIMIT, ReportData

CONFUSED_PAIRS_SHOWN = 10
SPLIT_TITLES = {"train": "Training", "val": "Validation", "test": "Test"}
SEVERITIES = ("error", "warning", "info", "ok")


@dataclass(frozen=True)
class Card:
    """One headline number: ``value`` big, ``title`` under it."""

    title: str
    value: str
    small: bool = False
    note: str = ""  # a line under the title (the interval and the baseline of an accuracy)


@dataclass(frozen=True)
class Chart:
    """Where a figure goes: an empty div the page's script fills from the figures' JSON."""

    id: str
    max_width: int | None = None


class Figures:
    """Collects figures as JSON for one <script type='application/json'> block."""

    def __init__(self) -> None:
        self._items: list[tuple[str, str]] = []

    def add(self, fig: go.Figure, max_width: int | None = None) -> Chart:
        chart = Chart(f"fig-{len(self._items) + 1}", max_width)
        self._items.append((chart.id, fig.to_json(validate=False)))
        return chart

    def json(self) -> str:
        body = ",".join(f"{json.dumps(k)}:{v}" for k, v in self._items)
        # "</" inside a <script> element could end it early; "<\/" means the same in JSON.
        return ("{" + body + "}").replace("</", "<\\/").replace("<!--", "<\\u0021--")


def report_context(data: ReportData) -> dict[str, Any]:
    """The template's variables for ``data`` (see templates/report.html.j2).

    ``sections`` holds one entry per section; None means the run has nothing for it,
    and the template leaves out the section and its link.
    """
    figures = Figures()
    splits = ordered(data.metrics)
    sections = {
        "dataset": _dataset(data, figures),
        "model": _model(data),
        "training": _training(data, figures),
        "metrics": _metrics(data, splits),
        "confusion": _confusion(data, splits, figures),
        "mistakes": _mistakes(data, splits),
        "calibration": _split_charts(data, splits, figures, "calibration"),
        "curves": _split_charts(data, splits, figures, "curves"),
        "exports": _exports(data),
        "notes": data.notes if data.notes.strip() else None,
    }
    status = (data.status or "unknown").upper()
    return {
        "title": f"{scrub(data.run_name or data.run_id or 'Run')} · Finetune Dashboard report",
        "name": scrub(data.run_name) if data.run_name else "Untitled run",
        "status": status,
        "facts": _facts(data),
        "overview": _overview(data, splits),
        "headline": _headline(data),
        "sections": sections,
        "generated": data.generated_at or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        # Our own JSON, made unable to close its <script> element by Figures.json().
        "figures_json": Markup(figures.json()),
    }


# --------------------------------------------------------------------- header
def _facts(d: ReportData) -> list[tuple[str, str]]:
    facts = [
        ("Run ID", d.run_id),
        ("Created", d.created_at),
        ("Finished", d.finished_at),
        ("Creator", d.creator),
        ("Duration", duration(d.duration_seconds)),
    ]
    return [(k, str(v)) for k, v in facts if v not in ("", None)]


def _overview(d: ReportData, splits: list[str]) -> list[Card]:
    cards = []
    for split in splits:
        m = d.metrics[split]
        cards.append(accuracy_card(split_honesty({"splits": d.metrics}, split), titled=True))
        cards.append(Card(f"{split_title(split)} macro F1", pct(m.get("macro", {}).get("f1"))))
    if d.best_epoch is not None:
        cards.append(Card("Best epoch", str(d.best_epoch)))
    if d.model:
        cards.append(Card("Model", d.model, small=True))
    return cards


def accuracy_card(h: SplitHonesty, titled: bool = False) -> Card:
    """An accuracy with its split's label, 95% interval and majority-class baseline."""
    title = f"{h.title} accuracy ({h.tag})" if titled else f"Accuracy ({h.tag})"
    return Card(title, pct(h.accuracy), note=f"{h.interval_text} · {h.baseline_text}")


def _headline(d: ReportData) -> dict[str, Any] | None:
    """The one-line headline (test, else validation labelled optimistic) and its warnings."""
    if not d.metrics:
        return None
    h = headline({"splits": d.metrics})
    return {"text": h.text, "warnings": list(h.warnings), "optimistic": h.chose_model}


# ------------------------------------------------------------------- sections
def _dataset(d: ReportData, figures: Figures) -> dict[str, Any]:
    rows = [("Name", scrub(d.dataset_name)), ("Fingerprint", d.dataset_fingerprint)]
    for split in charts.ordered_splits(d.split_counts):
        rows.append((f"{split_title(split)} images", str(sum(d.split_counts[split].values()))))
    if d.class_names:
        rows.append(("Classes", f"{len(d.class_names)}: " + ", ".join(d.class_names)))
    health = [
        {
            "severity": _severity(h),
            "message": scrub(h.get("message", "")),
            "count": str(h.get("count", "")),
        }
        for h in d.health_summary
    ]
    chart = figures.add(charts.class_distribution(d.split_counts)) if d.split_counts else None
    return {"rows": _kv(rows, mono={"Fingerprint"}), "health": health, "chart": chart}


def _model(d: ReportData) -> dict[str, Any]:
    main = [(k, v) for k, v in (("Model", d.model), ("Strategy", d.strategy)) if v]
    config = [(k, scrub(v)) for k, v in sorted(d.config.items())]
    environment = [(k, scrub(v)) for k, v in d.environment.items()]
    return {
        "main": _kv(main),
        "config": _kv(config, mono=set(map(str, d.config))),
        "environment": _kv(environment),
    }


def _training(d: ReportData, figures: Figures) -> dict[str, Any]:
    cards = [Card("Epochs run", str(len(d.history)) if d.history else "0")]
    if d.best_epoch is not None:
        cards.append(Card("Best epoch", str(d.best_epoch)))
    if d.duration_seconds is not None:
        cards.append(Card("Duration", duration(d.duration_seconds)))
    return {
        "cards": cards,
        "chart": figures.add(charts.training_curves(d.history, d.best_epoch)),
        "log": [scrub(line) for line in d.log],
    }


def _metrics(d: ReportData, splits: list[str]) -> dict[str, Any]:
    views = []
    for split in splits:
        m = d.metrics[split]
        honest = split_honesty({"splits": d.metrics}, split)
        cards = [
            accuracy_card(honest),
            Card("Balanced accuracy", pct(m.get("balanced_accuracy"))),
            Card("Macro F1", pct(m.get("macro", {}).get("f1"))),
            Card("Weighted F1", pct(m.get("weighted", {}).get("f1"))),
        ]
        for k, v in (m.get("top_k") or {}).items():
            cards.append(Card(f"Top-{k.removeprefix('top')} accuracy", pct(v)))
        cards += [
            Card(
                "Macro ROC AUC", num(m.get("macro_auc"), 3) if honest.auc_defined else "undefined"
            ),
            Card("Log loss", num(m.get("log_loss"), 3)),
            Card("ECE", pct(m.get("calibration", {}).get("ece"))),
            Card("Images", str(m.get("n", "–"))),
        ]
        views.append(
            {
                "title": split_title(split),
                "honesty": honest.text,
                "warnings": list(honest.warnings),
                "cards": cards,
                "classes": _per_class(m),
            }
        )
    return {"splits": views}


def _per_class(m: dict) -> list[dict[str, Any]]:
    roc, pr = m.get("roc", {}), m.get("pr", {})
    rows = []
    for row in m.get("per_class", []):
        name = row.get("class", "")
        rows.append(
            {
                "name": str(name),
                "bars": [_bar(row.get(k)) for k in ("precision", "recall", "f1")],
                "auc": num((roc.get(name) or {}).get("auc"), 3),
                "ap": num((pr.get(name) or {}).get("average_precision"), 3),
                "support": str(row.get("support", "")),
            }
        )
    return rows


def _confusion(d: ReportData, splits: list[str], figures: Figures) -> list[Chart] | None:
    parts = []
    for split in splits:
        m = d.metrics[split]
        names = m.get("class_names") or d.class_names
        if m.get("confusion") and len(names) == len(m["confusion"]):
            fig = charts.confusion_matrix(m["confusion"], names)
            fig.update_layout(title_text=f"{split_title(split)} confusion matrix")
            # Cells are square: a plot wider than it is tall only adds empty space.
            parts.append(figures.add(fig, max_width=int(fig.layout.height) + 140))
    return parts or None


def _mistakes(d: ReportData, splits: list[str]) -> dict[str, Any]:
    tables = []
    for split in splits:
        pairs = d.metrics[split].get("most_confused") or []
        if pairs:
            rows = [
                (str(p.get("true")), str(p.get("pred")), str(p.get("count")))
                for p in pairs[:CONFUSED_PAIRS_SHOWN]
            ]
            tables.append({"title": f"{split_title(split)}: most confused pairs", "rows": rows})
    return {"tables": tables, "gallery": _gallery(d.gallery), "note": scrub(d.gallery_note)}


def _gallery(items: list[dict]) -> dict[str, Any]:
    """Misclassified thumbnails per split, most confident first, GALLERY_LIMIT in all."""
    by_split: dict[str, list[dict]] = {}
    for g in items:
        by_split.setdefault(str(g.get("split") or ""), []).append(g)
    order = ordered(by_split)
    left, groups = GALLERY_LIMIT, []
    for k, split in enumerate(order):
        group = sorted(by_split[split], key=lambda g: -(_float(g.get("prob_pred")) or 0.0))
        quota = -(-left // (len(order) - k))  # an even share of what is left, rounded up
        shown = group[:quota]
        left -= len(shown)
        count = (
            f"{len(shown)} of {len(group)}, most confident first"
            if len(group) > len(shown)
            else f"{len(group)}, most confident first"
        )
        groups.append(
            {
                "title": split_title(split) if split else "Misclassified",
                "count": count,
                "thumbs": [_thumb(g) for g in shown],
            }
        )
    total = len(items)
    more = (
        f" The report shows {GALLERY_LIMIT} of the {total} mistakes to stay small."
        if total > GALLERY_LIMIT
        else ""
    )
    return {"groups": groups, "more": more}


def _thumb(g: dict) -> dict[str, str]:
    data = g.get("thumbnail_png") or b""
    return {
        # Base64 and this prefix hold no character HTML escaping changes: the template
        # escapes the URI like any value and it arrives intact, nothing marked safe.
        "uri": f"data:{_mime(data)};base64,{base64.b64encode(data).decode('ascii')}",
        "actual": str(g.get("true")),
        "predicted": str(g.get("pred")),
        "p_actual": pct(g.get("prob_true")),
        "p_predicted": pct(g.get("prob_pred")),
        "name": scrub(g.get("name") or ""),
        "origin": scrub(g.get("origin") or ""),
    }


def _split_charts(
    d: ReportData, splits: list[str], figures: Figures, kind: str
) -> list[Chart] | None:
    """The calibration diagrams or the ROC/PR curves of every split that has them."""
    parts = []
    for split in splits:
        m = d.metrics[split]
        if kind == "calibration" and m.get("calibration"):
            fig = charts.reliability_diagram(m["calibration"])
        elif kind == "curves" and (m.get("roc") or m.get("pr")):
            names = m.get("class_names") or d.class_names
            fig = charts.roc_pr_curves(m.get("roc") or {}, m.get("pr") or {}, names)
        else:
            continue
        fig.update_layout(title_text=f"{split_title(split)}: {fig.layout.title.text}")
        parts.append(figures.add(fig))
    return parts or None


def _exports(d: ReportData) -> dict[str, Any]:
    checks = [
        {
            "format": scrub(c.get("format", "")),
            "passed": bool(c.get("passed")),
            "max_abs_diff": sci(c.get("max_abs_diff")),
            "tolerance": sci(c.get("tolerance")),
        }
        for c in d.export_checks
    ]
    return {"checks": checks}


# ------------------------------------------------------------------ formatting
_ABS_PATH = re.compile(
    r"(?<![\w.:/\\])(?:[A-Za-z]:[\\/]|\\\\|~[\\/]|/)(?:[^\s\\/]+[\\/])*([^\s\\/]+)"
)


def scrub(value: Any) -> str:
    """Text with absolute filesystem paths shortened to '…/name' (reports get mailed)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return _ABS_PATH.sub(lambda m: "…/" + m.group(1), text)


def pct(value: Any) -> str:
    v = _float(value)
    return "–" if v is None else f"{v:.1%}"


def num(value: Any, digits: int) -> str:
    v = _float(value)
    return "–" if v is None else f"{v:.{digits}f}"


def sci(value: Any) -> str:
    v = _float(value)
    return "–" if v is None else f"{v:.2e}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def ordered(by_split: dict[str, Any]) -> list[str]:
    """Splits that have something, evaluation splits first: val, test, train, others."""
    known = [s for s in ("val", "test", "train") if by_split.get(s)]
    return known + [s for s in by_split if s not in known and by_split.get(s)]


def split_title(split: str) -> str:
    return SPLIT_TITLES.get(split, split.capitalize())


def _kv(rows: list[tuple[str, Any]], mono: set[str] | None = None) -> list[dict[str, Any]]:
    mono = mono or set()
    return [{"key": str(k), "value": str(v), "mono": k in mono} for k, v in rows]


def _bar(value: Any) -> dict[str, str] | None:
    """A table cell drawn as a bar: its width (0-100 %) and its text."""
    v = _float(value)
    if v is None:
        return None
    return {"width": f"{max(0.0, min(1.0, v)) * 100:.1f}", "text": f"{v:.3f}"}


def _severity(h: dict) -> str:
    sev = str(h.get("severity", "info")).lower()
    return sev if sev in SEVERITIES else "info"


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"GIF8"):
        return "image/gif"
    return "image/png"
