"""Charts of a dataset: images per class and split."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from finetune_core.reporting.charts.style import (
    MAX_TICK_CHARS,
    PALETTE,
    apply_style,
    empty_figure,
    label,
)


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
    return apply_style(fig, title)


def ordered_splits(split_counts: dict[str, Any]) -> list[str]:
    """Split names in reading order: train, val, test, then any others."""
    known = [s for s in ("train", "val", "test") if s in split_counts]
    return known + [s for s in split_counts if s not in known]
