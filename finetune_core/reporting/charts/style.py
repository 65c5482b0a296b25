"""The shared look of every chart (template, palette, fonts, margins) and the helpers
each chart module uses.

Every label that comes from a user (class, run and dataset names) goes through
`label`, because plotly renders a subset of HTML in text, ticks and hovers: a
class called ``<b>x</b>`` must show those characters, not bold text.
"""

from __future__ import annotations

import html
import math
from typing import Any

import plotly.graph_objects as go

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


def apply_style(fig: go.Figure, title: str, height: int = HEIGHT) -> go.Figure:
    """Give ``fig`` the dashboard's look and ``title``; returns the same figure."""
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
    return apply_style(fig, title, height=240)


def finite(value: Any) -> float | None:
    """A finite float or None (plotly draws None as a gap)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def epoch_of(row: dict, position: int) -> float:
    """The row's epoch number, or its 1-based position when it has none."""
    epoch = finite(row.get("epoch"))
    return float(position + 1) if epoch is None else epoch
