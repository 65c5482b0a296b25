"""Classification metrics from predicted probabilities, in plain numpy.

`compute_metrics` turns true labels and softmax probabilities into one
JSON-serialisable dict (the content of ``eval.json`` per split). The numbers
match scikit-learn's definitions (``zero_division=0``); the tests check that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from finetune_core.models.inference import log_loss

MAX_CURVE_POINTS = 200  # per ROC or PR curve
CURVE_POINT_BUDGET = 4000  # per curve kind over all classes (at least 50 per class)


def compute_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    *,
    paths: list[str] | None = None,
    top_losses: int = 24,
    calibration_bins: int = 10,
) -> dict[str, Any]:
    """Every evaluation number for one split.

    ``y_true`` holds class indices (N,), ``probs`` softmax probabilities (N, C)
    whose columns follow ``class_names``; ``paths`` (relative to the dataset
    root) label the top-loss entries. Macro averages use the classes that occur
    in ``y_true`` or in the predictions (scikit-learn's default); ``per_class``
    lists every class, with zeros for a class that never occurs.
    """
    y, p = _validate(y_true, probs, class_names, paths)
    n, c = p.shape
    pred = p.argmax(axis=1)
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)

    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    tp = np.diag(confusion)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = (support > 0) | (predicted > 0)

    row_sums = confusion.sum(axis=1, keepdims=True)
    normalized = np.divide(
        confusion, row_sums, out=np.zeros((c, c), dtype=np.float64), where=row_sums > 0
    )

    roc: dict[str, Any] = {}
    pr: dict[str, Any] = {}
    aucs: list[float] = []
    # Fewer points per curve when there are many classes, so eval.json stays small.
    points = max(50, min(MAX_CURVE_POINTS, CURVE_POINT_BUDGET // c))
    for k, name in enumerate(class_names):
        curve = _binary_curves(y == k, p[:, k], points)
        roc[name] = {"fpr": curve["fpr"], "tpr": curve["tpr"], "auc": curve["auc"]}
        pr[name] = {
            "precision": curve["precision"],
            "recall": curve["recall"],
            "average_precision": curve["average_precision"],
        }
        if curve["auc"] is not None:
            aucs.append(curve["auc"])

    result: dict[str, Any] = {
        "n": int(n),
        "num_classes": int(c),
        "class_names": list(class_names),
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "top_k": _top_k(y, p),
        "per_class": [
            {
                "class": name,
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
            }
            for k, name in enumerate(class_names)
        ],
        "macro": {
            "precision": float(precision[present].mean()),
            "recall": float(recall[present].mean()),
            "f1": float(f1[present].mean()),
        },
        "weighted": {
            "precision": float((precision * support).sum() / n),
            "recall": float((recall * support).sum() / n),
            "f1": float((f1 * support).sum() / n),
        },
        "confusion": confusion.tolist(),
        "confusion_normalized": normalized.tolist(),
        "roc": roc,
        "pr": pr,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "calibration": calibration(y, p, bins=calibration_bins),
        "top_losses": _top_losses(y, p, class_names, paths, top_losses),
        "most_confused": most_confused(confusion, class_names),
        "log_loss": log_loss(y, p),
    }
    return result


# --------------------------------------------------------------------- pieces
def calibration(y: np.ndarray, probs: np.ndarray, *, bins: int = 10) -> dict[str, Any]:
    """Expected calibration error over ``bins`` equal-width confidence bins.

    Bin i covers (lo, hi]; the first bin also includes 0. Empty bins report
    ``accuracy`` and ``confidence`` as None.
    """
    if bins < 1:
        raise ValueError(f"calibration_bins must be at least 1 (got {bins}).")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    n = len(y)
    ece = 0.0
    out = []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        acc: float | None = None
        conf: float | None = None
        if count:
            acc = float(correct[mask].mean())
            conf = float(confidence[mask].mean())
            ece += count / n * abs(acc - conf)
        out.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": count,
                "accuracy": acc,
                "confidence": conf,
            }
        )
    return {"ece": float(ece), "bins": out}


def most_confused(confusion: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    """Off-diagonal (true, predicted) pairs with a non-zero count, largest first."""
    pairs = []
    for i, j in zip(*np.nonzero(confusion), strict=True):
        if i != j:
            pairs.append((int(confusion[i, j]), int(i), int(j)))
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [
        {
            "true": class_names[i],
            "pred": class_names[j],
            "true_index": i,
            "pred_index": j,
            "count": count,
        }
        for count, i, j in pairs
    ]


def _top_k(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    c = probs.shape[1]
    if c <= 5:
        return {}
    true_score = probs[np.arange(len(y)), y]
    # Rank of the true class: how many classes score strictly higher.
    rank = (probs > true_score[:, None]).sum(axis=1)
    return {f"top{k}": float((rank < k).mean()) for k in (3, 5)}


def _top_losses(
    y: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    paths: list[str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    pred = probs.argmax(axis=1)
    wrong = np.nonzero(pred != y)[0]
    if limit <= 0 or wrong.size == 0:
        return []
    eps = np.finfo(probs.dtype).eps
    p_true = probs[wrong, y[wrong]]
    loss = -np.log(np.clip(p_true, eps, 1.0))
    # Highest loss first; ties broken by the most confident wrong prediction.
    order = np.lexsort((-probs[wrong, pred[wrong]], -loss))[:limit]
    out = []
    for o in order:
        i = int(wrong[o])
        out.append(
            {
                "index": i,
                "path": paths[i] if paths is not None else None,
                "true": class_names[y[i]],
                "pred": class_names[pred[i]],
                "true_index": int(y[i]),
                "pred_index": int(pred[i]),
                "prob_pred": float(probs[i, pred[i]]),
                "prob_true": float(probs[i, y[i]]),
                "loss": float(loss[o]),
            }
        )
    return out


def _binary_curves(positive: np.ndarray, score: np.ndarray, points: int) -> dict[str, Any]:
    """One-vs-rest ROC and precision-recall curves, AUC and average precision."""
    n_pos = int(positive.sum())
    n_neg = int(positive.size - n_pos)
    order = np.argsort(-score, kind="mergesort")
    s = score[order]
    hits = positive[order].astype(np.float64)
    # The last index of each run of equal scores is one threshold.
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tps = np.cumsum(hits)[last]
    fps = (last + 1) - tps

    if n_pos and n_neg:
        # Drop points on straight segments (they add size, not shape), as sklearn does.
        corner = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True][: fps.size]
        fpr = np.r_[0.0, fps[corner] / n_neg]
        tpr = np.r_[0.0, tps[corner] / n_pos]
        auc: float | None = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)
    else:
        fpr = tpr = np.array([0.0, 1.0])
        auc = None

    if n_pos:
        precision = tps / (tps + fps)
        recall = tps / n_pos
        average_precision: float | None = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
        # Plot from high recall to low and end at (recall 0, precision 1), like scikit-learn.
        pr_precision = np.r_[precision[::-1], 1.0]
        pr_recall = np.r_[recall[::-1], 0.0]
    else:
        average_precision = None
        pr_precision = pr_recall = np.array([], dtype=np.float64)

    return {
        "fpr": _thin(fpr, points),
        "tpr": _thin(tpr, points),
        "auc": auc,
        "precision": _thin(pr_precision, points),
        "recall": _thin(pr_recall, points),
        "average_precision": average_precision,
    }


def _thin(values: np.ndarray, limit: int = MAX_CURVE_POINTS) -> list[float]:
    """At most ``limit`` evenly spaced points, first and last kept, rounded for JSON size."""
    if values.size > limit:
        keep = np.unique(np.linspace(0, values.size - 1, limit).round().astype(int))
        values = values[keep]
    return [round(float(v), 6) for v in values]


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _validate(
    y_true: Any, probs: Any, class_names: list[str], paths: list[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true)
    if p.ndim != 2:
        raise ValueError(f"probs must be a 2-D array (samples x classes), got shape {p.shape}.")
    n, c = p.shape
    if n == 0:
        raise ValueError("There are no samples to evaluate: the split is empty.")
    if c != len(class_names):
        raise ValueError(
            f"probs has {c} columns but there are {len(class_names)} class names; "
            "they must match one to one."
        )
    if len(set(class_names)) != len(class_names):
        raise ValueError("class_names contains duplicates; every class needs a unique name.")
    y = _class_indices(y, n, c)
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or infinite values; the model output is broken.")
    if p.min() < -1e-6 or p.max() > 1 + 1e-6 or not np.allclose(p.sum(axis=1), 1.0, atol=1e-2):
        raise ValueError(
            "probs must be probabilities (each row in [0, 1], summing to 1): "
            "apply softmax to the logits first."
        )
    if paths is not None and len(paths) != n:
        raise ValueError(f"paths has {len(paths)} entries but there are {n} samples.")
    return y, np.clip(p, 0.0, 1.0)


def _class_indices(y: np.ndarray, n: int, c: int) -> np.ndarray:
    """``y_true`` checked to be ``n`` class indices in 0..c-1, as int64."""
    if y.shape != (n,):
        raise ValueError(f"y_true must have shape ({n},) to match probs, got {y.shape}.")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError("y_true must hold integer class indices.")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"y_true holds class indices outside 0..{c - 1}.")
    return y
