"""The honest-headline rules (evaluation/honesty.py) on known values and real metrics."""

from __future__ import annotations

import numpy as np
import pytest

from finetune_core.evaluation.honesty import (
    HELD_OUT,
    OPTIMISTIC,
    headline,
    majority_baseline,
    split_honesty,
    summary_lines,
    wilson_interval,
)
from finetune_core.evaluation.metrics import compute_metrics

NAMES = ["cat", "dog"]


def split_metrics(labels: list[int], preds: list[int], names: list[str] = NAMES) -> dict:
    """compute_metrics on one-hot-ish probabilities that predict ``preds``."""
    probs = np.full((len(labels), len(names)), 0.1 / max(1, len(names) - 1))
    probs[np.arange(len(labels)), preds] = 0.9
    return compute_metrics(np.array(labels), probs, names)


def evaluation(**splits: dict) -> dict:
    return {"class_names": NAMES, "splits": splits}


@pytest.mark.parametrize(
    ("correct", "n", "lo", "hi"),
    [(8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (1, 2, 0.0945, 0.9055)],
)
def test_wilson_interval_known_values(correct: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(correct, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_interval_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="between 0 and n"):
        wilson_interval(11, 10)


def test_majority_baseline_on_a_skewed_split() -> None:
    assert majority_baseline({"cat": 3, "dog": 17}) == (0.85, "dog")
    assert majority_baseline({"a": 2, "b": 2}) == (0.5, "a")  # ties: the first listed


def test_validation_without_test_is_labelled_optimistic() -> None:
    # 40 images, 34 dogs: the baseline is 85%; 36 right -> 90%.
    labels = [0] * 6 + [1] * 34
    preds = [0] * 4 + [1] * 2 + [1] * 32 + [0] * 2
    h = headline(evaluation(val=split_metrics(labels, preds)))
    assert h.split == "val" and h.chose_model and h.label == OPTIMISTIC
    assert (h.n, h.correct, h.accuracy) == (40, 36, 0.9)
    assert (h.baseline, h.baseline_class) == (0.85, "dog")
    assert h.interval == pytest.approx(wilson_interval(36, 40))
    assert "optimistic: this split chose the best epoch" in h.text
    assert h.text.startswith("Validation accuracy 90.0% (95% CI 76.9%–96.0%) on 40 images")
    assert "majority-class baseline 85.0% (always 'dog')" in h.text
    assert any("no test split" in w for w in h.warnings)
    assert not any("Only" in w for w in h.warnings), "40 images is not a small split"


def test_with_a_test_split_the_headline_is_test_and_held_out() -> None:
    val = split_metrics([0] * 20 + [1] * 20, [0] * 20 + [1] * 20)
    test = split_metrics([0] * 20 + [1] * 20, [0] * 15 + [1] * 5 + [1] * 20)
    ev = evaluation(val=val, test=test)
    h = headline(ev)
    assert h.split == "test" and not h.chose_model and h.label == HELD_OUT
    assert h.accuracy == 35 / 40
    v = split_honesty(ev, "val")
    assert v.label == OPTIMISTIC and not any("no test split" in w for w in v.warnings)
    assert summary_lines(ev)[0] == h.text and summary_lines(ev)[1] == v.text


def test_small_split_and_missing_class_are_said_in_words() -> None:
    # Two images of one class: 50% accuracy, and no AUC can be computed.
    h = split_honesty(evaluation(val=split_metrics([0, 0], [0, 1])), "val")
    assert (h.n, h.accuracy) == (2, 0.5)
    assert not h.auc_defined
    text = " ".join(h.warnings)
    assert "Only 2 image(s) in this split" in text
    assert "from 9% to 91%" in text  # the Wilson interval of 1/2
    assert "No images of 'dog' in this split" in text
    assert "The AUC is undefined on this split" in text


def test_a_class_with_few_images_is_named() -> None:
    labels = [0] * 3 + [1] * 40
    h = split_honesty(evaluation(test=split_metrics(labels, labels)), "test")
    assert h.auc_defined
    assert h.warnings == (
        "Class(es) with fewer than 5 images here: 'cat' (3); their precision, recall and AUC "
        "rest on very few images.",
    )


def test_unknown_split_is_refused() -> None:
    with pytest.raises(ValueError, match="no 'test' split"):
        split_honesty(evaluation(val=split_metrics([0, 1], [0, 1])), "test")
