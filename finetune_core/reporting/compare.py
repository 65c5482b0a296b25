"""Comparing runs: which settings differ, and their headline metrics side by side."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from finetune_core.evaluation.honesty import split_honesty

# Settings that identify rather than configure a run.
_IGNORED = {"name", "notes"}


def config_diff(configs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows ``{"setting": key, <run label>: value, ...}`` for every setting that differs."""
    labels = list(configs)
    keys = sorted({k for c in configs.values() for k in c} - _IGNORED)
    rows = []
    for k in keys:
        values = [configs[label].get(k) for label in labels]
        if len({repr(v) for v in values}) > 1:
            rows.append(
                {"setting": k, **{label: _show(v) for label, v in zip(labels, values, strict=True)}}
            )
    return rows


def _show(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


HEADLINE = (
    ("accuracy", "Accuracy"),
    ("accuracy_interval", "Accuracy, 95% interval"),
    ("baseline", "Majority-class baseline"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("macro_f1", "Macro F1"),
    ("macro_auc", "Macro AUC"),
    ("log_loss", "Log loss"),
    ("ece", "Calibration error (ECE)"),
    ("n", "Images"),
)


def headline_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The numbers the metric cards and the comparison table show, from one split's metrics
    (the interval, "lo–hi" in percent, and the baseline from evaluation/honesty.py)."""
    m = metrics or {}
    honest = split_honesty({"splits": {"split": m}}, "split") if m.get("per_class") else None
    return {
        "accuracy": m.get("accuracy"),
        "accuracy_interval": (
            f"{honest.interval[0]:.1%}–{honest.interval[1]:.1%}" if honest else None
        ),
        "baseline": honest.baseline if honest else None,
        "balanced_accuracy": m.get("balanced_accuracy"),
        "macro_f1": (m.get("macro") or {}).get("f1"),
        "macro_auc": m.get("macro_auc"),
        "log_loss": m.get("log_loss"),
        "ece": (m.get("calibration") or {}).get("ece"),
        "n": m.get("n"),
    }


def metrics_table(evaluations: Mapping[str, Mapping[str, Any] | None], split: str) -> list[dict]:
    """One row per headline metric, one column per run (None where a run lacks the split)."""
    per_run = {
        label: headline_metrics(((ev or {}).get("splits") or {}).get(split))
        for label, ev in evaluations.items()
    }
    return [
        {"metric": title, **{label: values[key] for label, values in per_run.items()}}
        for key, title in HEADLINE
    ]
