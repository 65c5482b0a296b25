"""Charts of a run's training: loss/accuracy/learning-rate curves, the learning-rate
finder, and one metric compared across runs."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from finetune_core.reporting.charts.style import (
    BEST_COLOR,
    LR_COLOR,
    MARGIN,
    PALETTE,
    TRAIN_COLOR,
    VAL_COLOR,
    apply_style,
    empty_figure,
    epoch_of,
    finite,
    label,
)


def _pretty(metric: str) -> str:
    return metric.replace("_", " ").capitalize()


def training_curves(history: list[dict], best_epoch: int | None = None) -> go.Figure:
    """Loss, accuracy and learning rate per epoch; the best epoch marked on each panel."""
    title = "Training curves"
    if not history:
        return empty_figure("No epochs yet: the curves appear after the first epoch.", title)
    epochs = [epoch_of(row, i) for i, row in enumerate(history)]
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
            ys = [finite(row.get(key)) for row in history]
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

    lrs = [v for v in (finite(row.get("lr")) for row in history) if v is not None]
    if lrs and min(lrs) > 0 and max(lrs) / min(lrs) > 10:
        fig.update_yaxes(type="log", exponentformat="e", dtick="D2", row=1, col=3)
    else:
        fig.update_yaxes(exponentformat="e", row=1, col=3)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero", row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_xaxes(dtick=epoch_tick_step(max(epochs) - min(epochs)), tick0=0)
    fig = apply_style(fig, title, height=400)
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
        y = finite(rows[0].get(key))
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
            y=[finite(v) for v in losses],
            mode="lines",
            name="loss",
            line={"color": TRAIN_COLOR, "width": 2},
            hovertemplate="lr %{x:.2e}<br>loss %{y:.4g}<extra></extra>",
        )
    )
    if suggested is not None and suggested > 0:
        values = [v for v in (finite(v) for v in losses) if v is not None]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        at = _interp_log(suggested, list(lrs), [finite(v) for v in losses])
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
    return apply_style(fig, title)


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
    return apply_style(fig, title)


def _series(history: Iterable[dict], metric: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(history):
        y = finite(row.get(metric))
        if y is not None:
            xs.append(epoch_of(row, i))
            ys.append(y)
    return xs, ys


def epoch_tick_step(span: float, max_ticks: int = 8) -> int:
    """A whole-number step (1, 2, 5, 10, 20, 25, 50, 100, ...) giving at most about
    ``max_ticks`` epoch ticks per panel: never half epochs, never a crowded axis."""
    step = 1
    while span / step > max_ticks:
        for factor in (2, 2.5, 2):  # 1 -> 2 -> 5 -> 10 -> 20 -> 50 ...
            step = int(step * factor)
            if span / step <= max_ticks:
                break
    return step
