"""compute_metrics against scikit-learn on random predictions, plus the extras sklearn lacks."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from finetune_core.evaluation.metrics import MAX_CURVE_POINTS, calibration, compute_metrics


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _case(
    seed: int,
    n: int,
    c: int,
    *,
    absent_true: tuple[int, ...] = (),
    absent_pred: tuple[int, ...] = (),
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    allowed = [k for k in range(c) if k not in absent_true]
    y = rng.choice(allowed, size=n)
    logits = rng.normal(size=(n, c)) * 2.0
    logits[np.arange(n), y] += 1.0  # better than chance, still plenty of mistakes
    for k in absent_pred:
        logits[:, k] -= 30.0  # never the argmax, still a valid score for ROC/PR
    return y, _softmax(logits), [f"class_{k}" for k in range(c)]


CASES = [
    pytest.param(dict(seed=0, n=120, c=3), id="3-classes"),
    pytest.param(dict(seed=1, n=200, c=7), id="7-classes"),
    pytest.param(dict(seed=2, n=300, c=10), id="10-classes"),
    pytest.param(dict(seed=3, n=80, c=6, absent_pred=(2,)), id="never-predicted"),
    pytest.param(dict(seed=4, n=90, c=6, absent_true=(4,)), id="absent-from-truth"),
    pytest.param(dict(seed=5, n=60, c=8, absent_true=(1, 5), absent_pred=(1, 3)), id="both"),
    pytest.param(dict(seed=6, n=7, c=4, absent_true=(0,), absent_pred=(0,)), id="tiny"),
]


@pytest.mark.parametrize("case", CASES)
def test_matches_sklearn(case: dict) -> None:
    y, probs, names = _case(**case)
    c = len(names)
    pred = probs.argmax(axis=1)
    labels = list(range(c))
    m = compute_metrics(y, probs, names)

    assert m["n"] == len(y)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        expected_bal = skm.balanced_accuracy_score(y, pred)
    assert m["balanced_accuracy"] == pytest.approx(expected_bal, abs=1e-9)

    p, r, f, s = skm.precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0, average=None
    )
    for k, row in enumerate(m["per_class"]):
        assert row["class"] == names[k]
        assert row["precision"] == pytest.approx(p[k], abs=1e-9)
        assert row["recall"] == pytest.approx(r[k], abs=1e-9)
        assert row["f1"] == pytest.approx(f[k], abs=1e-9)
        assert row["support"] == s[k]
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
        assert m[avg]["precision"] == pytest.approx(p, abs=1e-9)
        assert m[avg]["recall"] == pytest.approx(r, abs=1e-9)
        assert m[avg]["f1"] == pytest.approx(f, abs=1e-9)

    cm = skm.confusion_matrix(y, pred, labels=labels)
    assert m["confusion"] == cm.tolist()
    rows = cm.sum(axis=1, keepdims=True)
    expected_norm = np.where(rows > 0, cm / np.maximum(rows, 1), 0.0)
    np.testing.assert_allclose(m["confusion_normalized"], expected_norm, atol=1e-12)

    aucs = []
    for k, name in enumerate(names):
        positives = y == k
        roc, pr = m["roc"][name], m["pr"][name]
        if 0 < positives.sum() < len(y):
            expected = skm.roc_auc_score(positives, probs[:, k])
            assert roc["auc"] == pytest.approx(expected, abs=1e-9)
            aucs.append(expected)
            fpr, tpr, _ = skm.roc_curve(positives, probs[:, k])
            _assert_same_curve(roc["fpr"], roc["tpr"], fpr, tpr)
        else:
            assert roc["auc"] is None
        if positives.any():
            expected_ap = skm.average_precision_score(positives, probs[:, k])
            assert pr["average_precision"] == pytest.approx(expected_ap, abs=1e-9)
            prec, rec, _ = skm.precision_recall_curve(positives, probs[:, k])
            _assert_same_curve(pr["recall"], pr["precision"], rec, prec)
        else:
            assert pr["average_precision"] is None
    assert m["macro_auc"] == pytest.approx(np.mean(aucs), abs=1e-9)

    if c > 5:
        for k in (3, 5):
            expected = skm.top_k_accuracy_score(y, probs, k=k, labels=labels)
            assert m["top_k"][f"top{k}"] == pytest.approx(expected, abs=1e-9)
    else:
        assert m["top_k"] == {}

    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=labels), abs=1e-9)
    json.dumps(m, allow_nan=False)  # eval.json must be strict JSON


def _assert_same_curve(xs: list, ys: list, ref_x: np.ndarray, ref_y: np.ndarray) -> None:
    """Equal to sklearn's curve, or (when thinned) an in-order subset of its points."""
    if len(ref_x) <= MAX_CURVE_POINTS:
        np.testing.assert_allclose(xs, ref_x, atol=1e-6)
        np.testing.assert_allclose(ys, ref_y, atol=1e-6)
        return
    ref = np.round(np.c_[ref_x, ref_y], 6)
    start = 0
    for point in np.c_[xs, ys]:
        hits = np.nonzero(np.all(np.abs(ref[start:] - point) < 1e-6, axis=1))[0]
        assert hits.size, f"{point} is not on the reference curve"
        start += int(hits[0]) + 1
    assert (xs[0], ys[0]) == tuple(ref[0]) and (xs[-1], ys[-1]) == tuple(ref[-1])


def test_curves_are_thinned_and_file_stays_small() -> None:
    y, probs, names = _case(seed=7, n=5000, c=10)
    m = compute_metrics(y, probs, names)
    for name in names:
        assert 100 < len(m["roc"][name]["fpr"]) <= MAX_CURVE_POINTS
        assert m["roc"][name]["fpr"][0] == 0.0 and m["roc"][name]["fpr"][-1] == 1.0
        assert m["roc"][name]["tpr"][-1] == 1.0
        assert len(m["pr"][name]["precision"]) <= MAX_CURVE_POINTS
        assert m["pr"][name]["recall"][-1] == 0.0 and m["pr"][name]["precision"][-1] == 1.0
        k = names.index(name)
        fpr, tpr, _ = skm.roc_curve(y == k, probs[:, k])
        _assert_same_curve(m["roc"][name]["fpr"], m["roc"][name]["tpr"], fpr, tpr)
        # the AUC is computed on the full curve, not the thinned one
        assert m["roc"][name]["auc"] == pytest.approx(skm.roc_auc_score(y == k, probs[:, k]))
    assert len(json.dumps(m)) < 300_000


def test_many_classes_keep_eval_json_small() -> None:
    y, probs, names = _case(seed=9, n=3000, c=100)
    m = compute_metrics(y, probs, names)
    assert all(len(m["roc"][n]["fpr"]) <= 50 for n in names)
    assert all(len(m["pr"][n]["recall"]) <= 50 for n in names)
    assert len(json.dumps(m)) < 1_000_000


def test_calibration_by_hand() -> None:
    probs = np.array([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.55, 0.45], [0.5, 0.5]])
    y = np.array([0, 1, 1, 0, 1])
    cal = calibration(y, probs, bins=5)
    by_hi = {round(b["hi"], 1): b for b in cal["bins"]}
    assert by_hi[1.0]["count"] == 2  # 0.95 and 0.85
    assert by_hi[1.0]["accuracy"] == 0.5
    assert by_hi[1.0]["confidence"] == pytest.approx(0.9)
    assert by_hi[0.8]["count"] == 1 and by_hi[0.8]["accuracy"] == 1.0  # 0.65, right
    assert by_hi[0.6]["count"] == 2  # 0.55 (right) and 0.5 (argmax 0, wrong): (0.4, 0.6]
    assert by_hi[0.6]["accuracy"] == 0.5
    assert by_hi[0.2]["count"] == 0 and by_hi[0.2]["accuracy"] is None
    expected = 2 / 5 * abs(0.5 - 0.9) + 1 / 5 * abs(1 - 0.65) + 2 / 5 * abs(0.5 - 0.525)
    assert cal["ece"] == pytest.approx(expected)
    assert sum(b["count"] for b in cal["bins"]) == 5


def test_top_losses_and_most_confused() -> None:
    names = ["cat", "dog", "fox"]
    probs = np.array(
        [
            [0.9, 0.05, 0.05],  # cat, right
            [0.1, 0.8, 0.1],  # true cat -> dog, p_true 0.1
            [0.02, 0.96, 0.02],  # true cat -> dog, p_true 0.02 (worst)
            [0.3, 0.3, 0.4],  # true dog -> fox, p_true 0.3
            [0.2, 0.7, 0.1],  # dog, right
        ]
    )
    y = np.array([0, 0, 0, 1, 1])
    paths = [f"train/img{i}.png" for i in range(5)]
    m = compute_metrics(y, probs, names, paths=paths, top_losses=2)
    top = m["top_losses"]
    assert [t["index"] for t in top] == [2, 1]
    assert top[0] == {
        "index": 2,
        "path": "train/img2.png",
        "true": "cat",
        "pred": "dog",
        "true_index": 0,
        "pred_index": 1,
        "prob_pred": 0.96,
        "prob_true": 0.02,
        "loss": pytest.approx(-np.log(0.02)),
    }
    assert [(c["true"], c["pred"], c["count"]) for c in m["most_confused"]] == [
        ("cat", "dog", 2),
        ("dog", "fox", 1),
    ]
    assert compute_metrics(y, probs, names, top_losses=0)["top_losses"] == []
    assert compute_metrics(y, probs, names)["top_losses"][0]["path"] is None


def test_perfect_predictions() -> None:
    y = np.array([0, 1, 2, 2])
    probs = np.eye(3)[y]
    m = compute_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == 1.0 and m["macro"]["f1"] == 1.0
    assert m["top_losses"] == [] and m["most_confused"] == []
    assert m["macro_auc"] == 1.0
    assert m["log_loss"] == pytest.approx(0.0, abs=1e-12)
    assert m["calibration"]["ece"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("y", "probs", "names", "message"),
    [
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a"], "2 columns but there are 1 class names"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "outside 0..1"),
        ([0], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "must have shape (2,)"),
        ([0, 1], [[3.0, -1.0], [0.2, 0.1]], ["a", "b"], "apply softmax"),
        ([0, 1], [[np.nan, 0.5], [0.5, 0.5]], ["a", "b"], "NaN"),
        ([], np.zeros((0, 2)), ["a", "b"], "split is empty"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "a"], "duplicates"),
        ([0.5, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "integer class indices"),
        ([0, 1], [0.5, 0.5], ["a", "b"], "2-D array"),
    ],
)
def test_bad_input_is_explained(y, probs, names, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compute_metrics(np.asarray(y), np.asarray(probs, dtype=float), names)


def test_float_labels_and_float32_probs_are_accepted() -> None:
    y, probs, names = _case(seed=8, n=50, c=4)
    a = compute_metrics(y.astype(np.float64), probs.astype(np.float32), names)
    b = compute_metrics(y, probs, names)
    assert a["accuracy"] == b["accuracy"]
    assert a["confusion"] == b["confusion"]
