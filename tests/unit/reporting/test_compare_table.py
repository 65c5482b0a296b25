"""The run comparison shows each accuracy with its 95% interval and majority baseline."""

from __future__ import annotations

import numpy as np

from finetune_core.evaluation.metrics import compute_metrics
from finetune_core.reporting.compare import headline_metrics, metrics_table


def split(labels: list[int], preds: list[int]) -> dict:
    probs = np.full((len(labels), 2), 0.1)
    probs[np.arange(len(labels)), preds] = 0.9
    return compute_metrics(np.array(labels), probs, ["cat", "dog"])


def test_interval_and_baseline_rows_per_run() -> None:
    a = split([0] * 2 + [1] * 8, [0] * 2 + [1] * 6 + [0] * 2)  # 8 of 10, 80% dogs
    head = headline_metrics(a)
    assert head["accuracy"] == 0.8 and head["baseline"] == 0.8
    assert head["accuracy_interval"] == "49.0%–94.3%"
    table = {r["metric"]: r for r in metrics_table({"A": {"splits": {"val": a}}, "B": None}, "val")}
    assert table["Accuracy, 95% interval"] == {"metric": "Accuracy, 95% interval",
                                              "A": "49.0%–94.3%", "B": None}  # fmt: skip
    assert table["Majority-class baseline"]["A"] == 0.8
    assert headline_metrics({"accuracy": 0.5})["baseline"] is None  # no per-class counts
