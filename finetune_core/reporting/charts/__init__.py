"""Plotly figure builders: one function per chart, shared by the app and the HTML report.

Callers use ``from finetune_core.reporting import charts`` and ``charts.confusion_matrix(...)``;
the charts live in modules by subject (training, evaluation, data), the shared look in
``style``.
"""

from finetune_core.reporting.charts.data import class_distribution, ordered_splits
from finetune_core.reporting.charts.evaluation import (
    CELL_TARGET_PX,
    confusion_matrix,
    per_class_bars,
    pr_curves,
    reliability_diagram,
    roc_curves,
    roc_pr_curves,
)
from finetune_core.reporting.charts.style import (
    FONT,
    HEIGHT,
    MARGIN,
    PALETTE,
    TEMPLATE,
    empty_figure,
    label,
)
from finetune_core.reporting.charts.training import (
    epoch_tick_step,
    lr_finder_curve,
    run_comparison,
    training_curves,
)

__all__ = [
    "CELL_TARGET_PX",
    "FONT",
    "HEIGHT",
    "MARGIN",
    "PALETTE",
    "TEMPLATE",
    "class_distribution",
    "confusion_matrix",
    "empty_figure",
    "epoch_tick_step",
    "label",
    "lr_finder_curve",
    "ordered_splits",
    "per_class_bars",
    "pr_curves",
    "reliability_diagram",
    "roc_curves",
    "roc_pr_curves",
    "run_comparison",
    "training_curves",
]
