"""Charts of an evaluation: confusion matrix, per-class bars, ROC and precision-recall
curves, reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from finetune_core.reporting.charts.style import (
    MARGIN,
    MAX_CELL_TEXT_CLASSES,
    MAX_TICK_CHARS,
    MUTED,
    PALETTE,
    apply_style,
    empty_figure,
    finite,
    label,
)

# The click targets' size in px: smaller than any drawn cell, so no two markers overlap
# (plotly's minimum hover radius is 3 px, i.e. a 6 px marker).
CELL_TARGET_PX = 6


def confusion_matrix(
    counts: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    normalized: bool = False,
) -> go.Figure:
    """Heatmap of counts (rows = true, columns = predicted) with clickable cells.

    A transparent Scatter trace sits on the cell centres with
    ``customdata=[true_index, pred_index]``: plotly reports clicks and
    selections on scatter points but not on heatmap cells. That trace carries
    the hover text (its hoverinfo must not be "skip", which would also switch
    off click and selection events); the heatmap's own hover is off, so the
    label shown is always the cell a click opens.

    Which point a click opens is plotly's "closest" rule: every point whose
    marker contains the pointer ties, and the last one wins. Markers as big as
    the drawn cells (whose size depends on the width the page gives the chart)
    overlap their neighbours, so a click near an edge opened the next cell.
    The markers are therefore tiny (CELL_TARGET_PX) and ``hoverdistance=-1``
    lets a click anywhere reach the nearest centre: on a square grid with equal
    x and y scales (scaleanchor) the nearest centre is the cell under the pointer.
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
        hoverinfo="skip",
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
    fig = go.Figure(heat)
    fig.add_trace(
        go.Scatter(
            x=[j for _ in idx for j in idx],
            y=[i for i in idx for _ in idx],
            customdata=[[i, j] for i in idx for j in idx],
            mode="markers",
            marker={
                "symbol": "square",
                "size": CELL_TARGET_PX,
                "color": "#000000",
                "opacity": 0.01,
            },
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
    fig = apply_style(fig, title, height=height)
    fig.update_layout(
        clickmode="event+select",
        hovermode="closest",
        hoverdistance=-1,  # no cut-off: the nearest cell centre answers anywhere in the plot
        margin={**MARGIN, "b": 120},
    )
    return fig


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
                y=[finite(row.get(key)) for row in per_class],
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
    return apply_style(fig, title)


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
        score = finite(curve.get(score_key))
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
    fig = apply_style(fig, title, height=440)
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
            score = finite(curve.get(sk))
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
    fig = apply_style(fig, title, height=460)
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
    ece = finite(calibration.get("ece")) if calibration else None
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
    return apply_style(fig, title, height=420)
