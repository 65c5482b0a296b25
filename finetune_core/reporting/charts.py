"""Plotly figure builders: one function per chart, shared by the app and the HTML report.

Every label that comes from a user (class, run and dataset names) goes through
`label`, because plotly renders a subset of HTML in text, ticks and hovers: a
class called ``<b>x</b>`` must show those characters, not bold text.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

TEMPLATE = "plotly_white"
PALETTE = [
    "#2563eb",
    "#ea580c",
    "#16a34a",
    "#dc2626",
    "#7c3aed",
    "#0891b2",
    "#ca8a04",
    "#db2777",
    "#4b5563",
    "#65a30d",
]
TRAIN_COLOR = PALETTE[0]
VAL_COLOR = PALETTE[1]
BEST_COLOR = PALETTE[2]
LR_COLOR = PALETTE[4]
MUTED = "#9ca3af"
HEIGHT = 380
MARGIN = {"l": 64, "r": 24, "t": 72, "b": 56}
FONT = {"family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", "size": 13}
MAX_TICK_CHARS = 24
MAX_CELL_TEXT_CLASSES = 30


# -------------------------------------------------------------------- helpers
def label(text: Any, max_chars: int | None = None) -> str:
    """A user string made safe for plotly text (HTML-escaped, optionally shortened)."""
    s = str(text)
    if max_chars is not None and len(s) > max_chars:
        s = s[: max_chars - 1] + "…"
    return html.escape(s, quote=False)


def _style(fig: go.Figure, title: str, height: int = HEIGHT) -> go.Figure:
    fig.update_layout(
        template=TEMPLATE,
        title={
            "text": title,
            "x": 0.01,
            "xanchor": "left",
            "font": {"size": 16},
            "subtitle": {"font": {"size": 12, "color": "#6b7280"}},
        },
        height=height,
        margin=MARGIN,
        font=FONT,
        colorway=PALETTE,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1},
        hoverlabel={"font": {"family": FONT["family"]}},
    )
    return fig


def empty_figure(message: str, title: str = "") -> go.Figure:
    """A figure that says why there is nothing to show (never a blank chart)."""
    fig = go.Figure()
    fig.add_annotation(
        text=label(message),
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        showarrow=False,
        font={"size": 15, "color": "#6b7280"},
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _style(fig, title, height=240)


def _num(value: Any) -> float | None:
    """A finite float or None (plotly draws None as a gap)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _epoch(row: dict, position: int) -> float:
    """The row's epoch number, or its 1-based position when it has none."""
    epoch = _num(row.get("epoch"))
    return float(position + 1) if epoch is None else epoch


def _pretty(metric: str) -> str:
    return metric.replace("_", " ").capitalize()


# ------------------------------------------------------------ training curves
def training_curves(history: list[dict], best_epoch: int | None = None) -> go.Figure:
    """Loss, accuracy and learning rate per epoch; the best epoch marked on each panel."""
    title = "Training curves"
    if not history:
        return empty_figure("No epochs yet: the curves appear after the first epoch.", title)
    epochs = [_epoch(row, i) for i, row in enumerate(history)]
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("Loss", "Accuracy", "Learning rate"),
        horizontal_spacing=0.07,
    )
    panels = [
        (1, [("train_loss", "train", TRAIN_COLOR), ("val_loss", "val", VAL_COLOR)]),
        (2, [("train_accuracy", "train", TRAIN_COLOR), ("val_accuracy", "val", VAL_COLOR)]),
        (3, [("lr", "learning rate", LR_COLOR)]),
    ]
    legend_shown: set[str] = set()
    for col, series in panels:
        for key, name, color in series:
            ys = [_num(row.get(key)) for row in history]
            if all(v is None for v in ys):
                continue
            fig.add_trace(
                go.Scatter(
                    x=epochs,
                    y=ys,
                    name=name,
                    legendgroup=name,
                    showlegend=name not in legend_shown,
                    mode="lines+markers",
                    line={"color": color, "width": 2},
                    marker={"size": 6},
                    hovertemplate=f"epoch %{{x}}<br>{key} %{{y:.4g}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
            legend_shown.add(name)
    if not fig.data:
        return empty_figure("The history has no loss, accuracy or learning-rate values.", title)

    _shade_phases(fig, history, epochs)
    if best_epoch is not None:
        _mark_best(fig, history, epochs, best_epoch)
    if epochs:
        fig.update_xaxes(range=[min(epochs) - 0.4, max(epochs) + 0.4])

    lrs = [v for v in (_num(row.get("lr")) for row in history) if v is not None]
    if lrs and min(lrs) > 0 and max(lrs) / min(lrs) > 10:
        fig.update_yaxes(type="log", exponentformat="e", dtick="D2", row=1, col=3)
    else:
        fig.update_yaxes(exponentformat="e", row=1, col=3)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero", row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_xaxes(dtick=epoch_tick_step(max(epochs) - min(epochs)), tick0=0)
    fig = _style(fig, title, height=400)
    # Room above the panel titles for the legend.
    fig.update_layout(margin={**MARGIN, "t": 96}, legend={"y": 1.14})
    return fig


def _shade_phases(fig: go.Figure, history: list[dict], epochs: list[float]) -> None:
    """Shade runs of epochs that share a phase (e.g. frozen, then unfrozen)."""
    phases = [row.get("phase") for row in history]
    if len({p for p in phases if p}) < 2:
        return
    start, segment = 0, 0
    for i in range(1, len(phases) + 1):
        if i == len(phases) or phases[i] != phases[start]:
            if phases[start]:
                if segment % 2 == 0:  # alternate shaded and plain segments
                    fig.add_vrect(
                        x0=epochs[start] - 0.5,
                        x1=epochs[i - 1] + 0.5,
                        fillcolor="#e5e7eb",
                        opacity=0.45,
                        layer="below",
                        line_width=0,
                        row=1,
                        col="all",
                    )
                fig.add_annotation(
                    x=epochs[start] - 0.45,
                    y=0.0,
                    xref="x",
                    yref="y domain",
                    xanchor="left",
                    yanchor="bottom",
                    text=label(phases[start]),
                    showarrow=False,
                    font={"size": 11, "color": "#6b7280"},
                )
            start, segment = i, segment + 1


def _mark_best(fig: go.Figure, history: list[dict], epochs: list[float], best: int) -> None:
    fig.add_vline(
        x=best, line={"color": BEST_COLOR, "dash": "dash", "width": 1.5}, row=1, col="all"
    )
    # Label on the side with room, so the text never widens the axis past the last epoch.
    right_half = bool(epochs) and best > (min(epochs) + max(epochs)) / 2
    fig.add_annotation(
        x=best,
        y=1.0,
        xref="x",
        yref="y domain",
        text=f"best epoch {best}",
        showarrow=False,
        xanchor="right" if right_half else "left",
        yanchor="top",
        xshift=-4 if right_half else 4,
        font={"color": BEST_COLOR, "size": 12},
    )
    rows = [row for row, e in zip(history, epochs, strict=True) if e == best]
    if not rows:
        return
    for col, key in ((1, "val_loss"), (2, "val_accuracy")):
        y = _num(rows[0].get(key))
        if y is not None:
            fig.add_trace(
                go.Scatter(
                    x=[best],
                    y=[y],
                    mode="markers",
                    name="best",
                    legendgroup="best",
                    showlegend=col == 1,
                    marker={"symbol": "star", "size": 14, "color": BEST_COLOR},
                    hovertemplate=f"best epoch {best}<br>{key} %{{y:.4g}}<extra></extra>",
                ),
                row=1,
                col=col,
            )


# ----------------------------------------------------------- confusion matrix
def confusion_matrix(
    counts: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    normalized: bool = False,
) -> go.Figure:
    """Heatmap of counts (rows = true, columns = predicted) with clickable cells.

    A transparent Scatter trace sits on the cell centres with
    ``customdata=[true_index, pred_index]``: plotly reports clicks and
    selections on scatter points but not on heatmap cells. That trace carries
    the same hover text as the heatmap; its hoverinfo must not be "skip",
    which would also switch off click and selection events.
    """
    m = np.asarray(counts, dtype=np.int64)
    c = len(class_names)
    if m.shape != (c, c):
        raise ValueError(f"counts must be a {c}x{c} matrix for {c} classes, got shape {m.shape}.")
    title = "Confusion matrix (row %)" if normalized else "Confusion matrix"
    if c == 0:
        return empty_figure("No classes to show.", title)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape, dtype=np.float64), where=rows > 0)
    names = [label(n) for n in class_names]
    hover = [
        [
            f"True: {names[i]}<br>Predicted: {names[j]}<br>Count: {m[i, j]}"
            f"<br>Share of true {names[i]}: {share[i, j]:.1%}"
            for j in range(c)
        ]
        for i in range(c)
    ]
    if normalized:
        z = share
        text = [[f"{v:.0%}" for v in row] for row in share]
    else:
        z = m
        text = [[str(v) for v in row] for row in m]
    idx = list(range(c))
    heat = go.Heatmap(
        z=z,
        x=idx,
        y=idx,
        colorscale="Blues",
        zmin=0,
        zmax=1 if normalized else max(1, int(m.max())),
        hovertext=hover,
        hovertemplate="%{hovertext}<extra></extra>",
        colorbar={"title": {"text": "row %" if normalized else "count"}, "thickness": 14},
        xgap=1,
        ygap=1,
        name="confusion",
    )
    if c <= MAX_CELL_TEXT_CLASSES:
        # The numbers are in the cells, so the colour bar would only take room.
        heat.update(
            text=text,
            texttemplate="%{text}",
            textfont={"size": 13 if c <= 12 else 9},
            showscale=False,
        )
    height = int(min(900, max(440, 200 + 44 * c)))
    side = height - MARGIN["t"] - 120  # the bottom margin grows with tick labels
    cell_px = max(4.0, side / c * 0.92)
    fig = go.Figure(heat)
    fig.add_trace(
        go.Scatter(
            x=[j for _ in idx for j in idx],
            y=[i for i in idx for _ in idx],
            customdata=[[i, j] for i in idx for j in idx],
            mode="markers",
            marker={"symbol": "square", "size": cell_px, "color": "#000000", "opacity": 0.01},
            selected={"marker": {"opacity": 0.01}},
            unselected={"marker": {"opacity": 0.01}},
            hovertext=[hover[i][j] for i in idx for j in idx],
            hovertemplate="%{hovertext}<extra></extra>",
            showlegend=False,
            name="cells",
        )
    )
    ticks = [label(n, MAX_TICK_CHARS) for n in class_names]
    fig.update_xaxes(
        title_text="Predicted",
        tickvals=idx,
        ticktext=ticks,
        tickangle=-45 if c > 6 else 0,
        showgrid=False,
        zeroline=False,
        constrain="domain",
    )
    fig.update_yaxes(
        title_text="True",
        tickvals=idx,
        ticktext=ticks,
        autorange="reversed",
        showgrid=False,
        zeroline=False,
        scaleanchor="x",
        constrain="domain",
    )
    fig = _style(fig, title, height=height)
    fig.update_layout(clickmode="event+select", margin={**MARGIN, "b": 120})
    return fig


# ----------------------------------------------------------- per-class metrics
def per_class_bars(per_class: list[dict]) -> go.Figure:
    """Precision, recall and F1 per class as grouped bars."""
    title = "Per-class precision, recall and F1"
    if not per_class:
        return empty_figure("No per-class metrics yet.", title)
    names = [label(row.get("class", ""), MAX_TICK_CHARS) for row in per_class]
    support = [row.get("support", 0) for row in per_class]
    fig = go.Figure()
    for key, color in (("precision", PALETTE[0]), ("recall", PALETTE[1]), ("f1", PALETTE[2])):
        fig.add_trace(
            go.Bar(
                x=names,
                y=[_num(row.get(key)) for row in per_class],
                name="F1" if key == "f1" else key,
                marker_color=color,
                customdata=support,
                hovertemplate=f"%{{x}}<br>{key} %{{y:.1%}}<br>support %{{customdata}}"
                "<extra></extra>",
            )
        )
    fig.update_layout(barmode="group", bargap=0.25)
    fig.update_xaxes(type="category", tickangle=-45 if len(per_class) > 8 else 0)
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%")
    return _style(fig, title)


def roc_curves(roc: dict[str, dict], class_names: Sequence[str]) -> go.Figure:
    """One-vs-rest ROC curve per class, AUC in the legend."""
    return _curves(
        roc,
        class_names,
        title="ROC curves (one vs rest)",
        x_key="fpr",
        y_key="tpr",
        score_key="auc",
        score_name="AUC",
        axes=("False positive rate", "True positive rate"),
        diagonal=True,
    )


def pr_curves(pr: dict[str, dict], class_names: Sequence[str]) -> go.Figure:
    """Precision-recall curve per class, average precision in the legend."""
    return _curves(
        pr,
        class_names,
        title="Precision-recall curves",
        x_key="recall",
        y_key="precision",
        score_key="average_precision",
        score_name="AP",
        axes=("Recall", "Precision"),
        diagonal=False,
    )


def _curves(
    curves: dict[str, dict],
    class_names: Sequence[str],
    *,
    title: str,
    x_key: str,
    y_key: str,
    score_key: str,
    score_name: str,
    axes: tuple[str, str],
    diagonal: bool,
) -> go.Figure:
    fig = go.Figure()
    missing: list[str] = []
    for k, name in enumerate(class_names):
        curve = curves.get(name) or {}
        score = _num(curve.get(score_key))
        xs, ys = curve.get(x_key) or [], curve.get(y_key) or []
        if score is None or not xs:
            missing.append(name)
            continue
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                name=f"{label(name, MAX_TICK_CHARS)} ({score_name} {score:.3f})",
                line={"color": PALETTE[k % len(PALETTE)], "width": 2},
                hovertemplate=f"{label(name)}<br>{axes[0]} %{{x:.3f}}<br>{axes[1]} %{{y:.3f}}"
                "<extra></extra>",
            )
        )
    if not fig.data:
        return empty_figure(
            "No curve can be drawn: no class has both positives and negatives.", title
        )
    if diagonal:
        fig.add_trace(
            go.Scatter(
                x=[0, 1],
                y=[0, 1],
                mode="lines",
                name="chance",
                line={"color": MUTED, "dash": "dash", "width": 1},
                hoverinfo="skip",
            )
        )
    fig.update_xaxes(title_text=axes[0], range=[-0.01, 1.01])
    fig.update_yaxes(title_text=axes[1], range=[-0.01, 1.02])
    fig = _style(fig, title, height=440)
    if missing:
        fig.update_layout(title_subtitle_text=_missing_note(missing), margin={**MARGIN, "t": 84})
    fig.update_layout(
        legend={"orientation": "v", "y": 1, "yanchor": "top", "x": 1.02, "xanchor": "left"}
    )
    return fig


def roc_pr_curves(
    roc: dict[str, dict], pr: dict[str, dict], class_names: Sequence[str]
) -> go.Figure:
    """ROC (left) and precision-recall (right) side by side, one legend entry per class."""
    title = "ROC and precision-recall curves"
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("ROC (one vs rest)", "Precision-recall"),
        horizontal_spacing=0.1,
    )
    missing: list[str] = []
    for k, name in enumerate(class_names):
        color = PALETTE[k % len(PALETTE)]
        shown = False
        for col, curves, (xk, yk, sk, sname, axes) in (
            (1, roc, ("fpr", "tpr", "auc", "AUC", ("FPR", "TPR"))),
            (2, pr, ("recall", "precision", "average_precision", "AP", ("recall", "precision"))),
        ):
            curve = curves.get(name) or {}
            score = _num(curve.get(sk))
            if score is None or not curve.get(xk):
                continue
            fig.add_trace(
                go.Scatter(
                    x=curve[xk],
                    y=curve[yk],
                    mode="lines",
                    name=label(name, MAX_TICK_CHARS),
                    legendgroup=f"class-{k}",
                    showlegend=not shown,
                    line={"color": color, "width": 2},
                    hovertemplate=f"{label(name)} ({sname} {score:.3f})<br>{axes[0]} %{{x:.3f}}"
                    f"<br>{axes[1]} %{{y:.3f}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
            shown = True
        if not shown:
            missing.append(name)
    if not fig.data:
        return empty_figure(
            "No curve can be drawn: no class has both positives and negatives.", title
        )
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            name="chance",
            line={"color": MUTED, "dash": "dash", "width": 1},
            hoverinfo="skip",
        ),
        row=1,
        col=1,
    )
    fig.update_xaxes(title_text="False positive rate", range=[-0.01, 1.01], row=1, col=1)
    fig.update_yaxes(title_text="True positive rate", range=[-0.01, 1.02], row=1, col=1)
    fig.update_xaxes(title_text="Recall", range=[-0.01, 1.01], row=1, col=2)
    fig.update_yaxes(title_text="Precision", range=[-0.01, 1.02], row=1, col=2)
    fig = _style(fig, title, height=460)
    fig.update_layout(
        legend={
            "orientation": "v",
            "y": 1,
            "yanchor": "top",
            "x": 1.02,
            "xanchor": "left",
            "tracegroupgap": 0,  # one group per class; the default gap overflows the legend
        },
        margin={**MARGIN, "t": 96},
    )
    if missing:
        fig.update_layout(title_subtitle_text=_missing_note(missing))
    return fig


def _missing_note(missing: list[str]) -> str:
    shown = ", ".join(label(n, MAX_TICK_CHARS) for n in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f"No curve for {shown}{more}: no positive or no negative samples."


def reliability_diagram(calibration: dict) -> go.Figure:
    """Accuracy per confidence bin against the diagonal; ECE in the title."""
    ece = _num(calibration.get("ece")) if calibration else None
    title = f"Reliability diagram (ECE {ece:.1%})" if ece is not None else "Reliability diagram"
    bins = [b for b in (calibration or {}).get("bins", []) if b.get("count")]
    if not bins:
        return empty_figure("No predictions to calibrate.", title)
    centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
    widths = [(b["hi"] - b["lo"]) * 0.9 for b in bins]
    counts = [b["count"] for b in bins]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=centres,
            y=[b["accuracy"] for b in bins],
            width=widths,
            name="accuracy",
            marker_color=PALETTE[0],
            customdata=np.c_[[b["lo"] for b in bins], [b["hi"] for b in bins], counts],
            hovertemplate="confidence %{customdata[0]:.2f}-%{customdata[1]:.2f}"
            "<br>accuracy %{y:.1%}<br>%{customdata[2]} predictions<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=centres,
            y=[b["confidence"] for b in bins],
            mode="markers",
            name="mean confidence",
            marker={"color": PALETTE[1], "size": 9, "symbol": "diamond"},
            hovertemplate="mean confidence %{y:.1%}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            name="perfectly calibrated",
            line={"color": MUTED, "dash": "dash", "width": 1},
            hoverinfo="skip",
        )
    )
    fig.update_xaxes(title_text="confidence (top probability)", range=[0, 1])
    fig.update_yaxes(title_text="accuracy", range=[0, 1.02], tickformat=".0%")
    return _style(fig, title, height=420)


def class_distribution(split_counts: dict[str, dict[str, int]]) -> go.Figure:
    """Images per class, one bar group per split."""
    title = "Images per class"
    splits = ordered_splits(split_counts)
    classes: list[str] = []
    for split in splits:
        for name in split_counts[split]:
            if name not in classes:
                classes.append(name)
    if not classes:
        return empty_figure("No images counted yet.", title)
    fig = go.Figure()
    ticks = [label(n, MAX_TICK_CHARS) for n in classes]
    for k, split in enumerate(splits):
        counts = split_counts[split]
        fig.add_trace(
            go.Bar(
                x=ticks,
                y=[counts.get(n, 0) for n in classes],
                name=label(split),
                marker_color=PALETTE[k % len(PALETTE)],
                hovertemplate=f"{label(split)}<br>%{{x}}: %{{y}} images<extra></extra>",
            )
        )
    fig.update_layout(barmode="group", bargap=0.25)
    fig.update_xaxes(type="category", tickangle=-45 if len(classes) > 8 else 0)
    fig.update_yaxes(title_text="images")
    return _style(fig, title)


def ordered_splits(split_counts: dict[str, Any]) -> list[str]:
    """Split names in reading order: train, val, test, then any others."""
    known = [s for s in ("train", "val", "test") if s in split_counts]
    return known + [s for s in split_counts if s not in known]


def lr_finder_curve(
    lrs: Sequence[float], losses: Sequence[float], suggested: float | None = None
) -> go.Figure:
    """Loss against learning rate (log axis), the suggested learning rate marked."""
    title = "Learning-rate finder"
    if not lrs or len(lrs) != len(losses):
        return empty_figure("No learning-rate finder results.", title)
    fig = go.Figure(
        go.Scatter(
            x=list(lrs),
            y=[_num(v) for v in losses],
            mode="lines",
            name="loss",
            line={"color": TRAIN_COLOR, "width": 2},
            hovertemplate="lr %{x:.2e}<br>loss %{y:.4g}<extra></extra>",
        )
    )
    if suggested is not None and suggested > 0:
        finite = [v for v in (_num(v) for v in losses) if v is not None]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        at = _interp_log(suggested, list(lrs), [_num(v) for v in losses])
        # A scatter line, not a shape: shapes and annotations on log axes need log10 x.
        fig.add_trace(
            go.Scatter(
                x=[suggested, suggested],
                y=[lo, hi],
                mode="lines",
                name="suggested",
                line={"color": BEST_COLOR, "dash": "dash", "width": 1.5},
                hoverinfo="skip",
                showlegend=False,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[suggested],
                y=[at if at is not None else lo],
                mode="markers+text",
                name=f"suggested {suggested:.1e}",
                marker={"color": BEST_COLOR, "size": 12, "symbol": "star"},
                text=[f"suggested {suggested:.1e}"],
                textposition="top right",
                hovertemplate="suggested lr %{x:.2e}<extra></extra>",
            )
        )
    fig.update_xaxes(type="log", title_text="learning rate", exponentformat="e")
    fig.update_yaxes(title_text="loss")
    return _style(fig, title)


def _interp_log(x: float, xs: list[float], ys: list[float | None]) -> float | None:
    pts = [(math.log10(a), b) for a, b in zip(xs, ys, strict=True) if a and a > 0 and b is not None]
    if not pts:
        return None
    pts.sort()
    lx = math.log10(x)
    return float(np.interp(lx, [p[0] for p in pts], [p[1] for p in pts]))


def run_comparison(histories: dict[str, list[dict]], metric: str) -> go.Figure:
    """One curve per run for ``metric`` (e.g. val_accuracy) over epochs."""
    title = f"{_pretty(metric)} across runs"
    fig = go.Figure()
    for k, (run, history) in enumerate(histories.items()):
        xs, ys = _series(history, metric)
        if not xs:
            continue
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=label(run, 40),
                line={"color": PALETTE[k % len(PALETTE)], "width": 2},
                hovertemplate=f"{label(run)}<br>epoch %{{x}}<br>{metric} %{{y:.4g}}<extra></extra>",
            )
        )
    if not fig.data:
        return empty_figure(f"No run has {metric} values yet.", title)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text=_pretty(metric))
    if "accuracy" in metric:
        fig.update_yaxes(tickformat=".0%")
    return _style(fig, title)


def _series(history: Iterable[dict], metric: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(history):
        y = _num(row.get(metric))
        if y is not None:
            xs.append(_epoch(row, i))
            ys.append(y)
    return xs, ys


def epoch_tick_step(span: int, max_ticks: int = 8) -> int:
    """A whole-number step (1, 2, 5, 10, 20, 25, 50, 100, ...) giving at most about
    ``max_ticks`` epoch ticks per panel: never half epochs, never a crowded axis."""
    step = 1
    while span / step > max_ticks:
        for factor in (2, 2.5, 2):  # 1 -> 2 -> 5 -> 10 -> 20 -> 50 ...
            step = int(step * factor)
            if span / step <= max_ticks:
                break
    return step
