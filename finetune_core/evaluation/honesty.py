"""The honest headline: what an accuracy figure means and how far to trust it.

The one place for these rules; the Evaluation page, the HTML report and the CLI draw
what ``split_honesty`` and ``headline`` return:

- every accuracy names its split and says whether that split chose the model (the best
  epoch is chosen on validation, so a validation figure is optimistic);
- next to it stand the majority-class baseline (always predicting the split's most
  frequent class) and a 95% Wilson score interval;
- a split too small for the figure to mean much, a class with very few images, and an
  AUC that is undefined because a class is missing are each said in words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile
MIN_SPLIT_IMAGES = 30  # below this the interval is too wide for the figure to mean much
MIN_CLASS_IMAGES = 5  # below this a class's precision, recall and AUC rest on a handful
SPLIT_TITLES = {"train": "Training", "val": "Validation", "test": "Test"}
# The split that chose the best epoch (RunConfig.best_metric is val_accuracy or val_loss).
SELECTION_SPLIT = "val"
OPTIMISTIC = "optimistic: this split chose the best epoch"
HELD_OUT = "held out: it did not choose the model"


def wilson_interval(correct: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` successes in ``n`` trials (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0/n and n/n.
    """
    if n <= 0:
        raise ValueError(f"An interval needs at least one image (got n={n}).")
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be between 0 and n={n} (got {correct}).")
    p = correct / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def majority_baseline(support: Mapping[str, int]) -> tuple[float, str]:
    """(accuracy, class) of always predicting the most frequent class of a split.

    ``support`` maps class name -> images of that class in the split; ties go to the
    class listed first.
    """
    total = sum(support.values())
    if total <= 0:
        raise ValueError("The split has no images, so it has no majority class.")
    name = max(support, key=lambda k: support[k])
    return support[name] / total, name


@dataclass(frozen=True)
class SplitHonesty:
    """One split's accuracy with what it takes to read it honestly."""

    split: str
    title: str  # "Validation", "Test"
    n: int
    correct: int
    accuracy: float
    interval: tuple[float, float]  # 95% Wilson
    baseline: float  # majority-class accuracy on this split
    baseline_class: str
    chose_model: bool  # this split picked the best epoch
    label: str  # OPTIMISTIC or HELD_OUT
    warnings: tuple[str, ...]
    auc_defined: bool  # False: no class has both positives and negatives here (say "undefined")

    @property
    def tag(self) -> str:
        """The label in one word or two, for a card title: 'optimistic' or 'held out'."""
        return "optimistic" if self.chose_model else "held out"

    @property
    def interval_text(self) -> str:
        lo, hi = self.interval
        return f"95% CI {lo:.1%}–{hi:.1%}"

    @property
    def baseline_text(self) -> str:
        return f"majority-class baseline {self.baseline:.1%} (always '{self.baseline_class}')"

    @property
    def text(self) -> str:
        """One line: '<Split> accuracy 80.0% (95% CI …) on 10 images · <label> · baseline …'."""
        return (
            f"{self.title} accuracy {self.accuracy:.1%} ({self.interval_text}) on {self.n} "
            f"images · {self.label} · {self.baseline_text}"
        )


def split_honesty(evaluation: Mapping[str, Any], split: str) -> SplitHonesty:
    """The honest reading of ``split`` in an evaluation (eval.json's content)."""
    splits = evaluation.get("splits") or {}
    if split not in splits:
        raise ValueError(f"The evaluation has no '{split}' split (it has {sorted(splits)}).")
    m = splits[split]
    support = {row["class"]: int(row["support"]) for row in m.get("per_class") or []}
    n = int(m.get("n") or sum(support.values()))
    correct = _correct(m, n)
    baseline, baseline_class = majority_baseline(support) if support else (0.0, "")
    chose = split == SELECTION_SPLIT
    return SplitHonesty(
        split=split,
        title=SPLIT_TITLES.get(split, split.capitalize()),
        n=n,
        correct=correct,
        accuracy=correct / n if n else float(m.get("accuracy") or 0.0),
        interval=wilson_interval(correct, n) if n else (0.0, 1.0),
        baseline=baseline,
        baseline_class=baseline_class,
        chose_model=chose,
        label=OPTIMISTIC if chose else HELD_OUT,
        warnings=tuple(_warnings(split, splits, n, support, correct, m.get("macro_auc"))),
        auc_defined=m.get("macro_auc") is not None,
    )


def headline_split(evaluation: Mapping[str, Any]) -> str:
    """The split the headline figure is on: test when there is one, else validation."""
    splits = evaluation.get("splits") or {}
    for split in ("test", SELECTION_SPLIT):
        if split in splits:
            return split
    if not splits:
        raise ValueError("The evaluation has no splits.")
    return next(iter(splits))


def headline(evaluation: Mapping[str, Any]) -> SplitHonesty:
    """The run's headline figure: test accuracy, or validation labelled optimistic."""
    return split_honesty(evaluation, headline_split(evaluation))


def summary_lines(evaluation: Mapping[str, Any]) -> list[str]:
    """Plain-text lines for a terminal: each split's line, then its warnings."""
    lines = []
    order = [s for s in ("test", "val") if s in (evaluation.get("splits") or {})]
    order += [s for s in evaluation.get("splits") or {} if s not in order]
    for split in order:
        h = split_honesty(evaluation, split)
        lines.append(h.text)
        lines += [f"  warning: {w}" for w in h.warnings]
    return lines


def _correct(m: Mapping[str, Any], n: int) -> int:
    """Images predicted right: the confusion matrix's diagonal (accuracy x n without it)."""
    confusion = m.get("confusion")
    if confusion:
        return int(sum(confusion[i][i] for i in range(len(confusion))))
    return int(round(float(m.get("accuracy") or 0.0) * n))


def _warnings(
    split: str,
    splits: Mapping[str, Any],
    n: int,
    support: Mapping[str, int],
    correct: int,
    macro_auc: float | None,
) -> list[str]:
    out = []
    missing = [name for name, count in support.items() if count == 0]
    if split == SELECTION_SPLIT and "test" not in splits:
        out.append(
            "There is no test split, so no figure here is independent of the choice of the "
            "model: expect somewhat lower accuracy on new images. Hold out a test split when "
            "importing the data."
        )
    if 0 < n < MIN_SPLIT_IMAGES:
        lo, hi = wilson_interval(correct, n)
        out.append(
            f"Only {n} image(s) in this split: the accuracy could be anywhere from {lo:.0%} "
            f"to {hi:.0%}, too uncertain to compare runs by. Add images to this split."
        )
    few = [f"'{name}' ({count})" for name, count in support.items() if 0 < count < MIN_CLASS_IMAGES]
    if few:
        out.append(
            f"Class(es) with fewer than {MIN_CLASS_IMAGES} images here: {', '.join(few)}; "
            "their precision, recall and AUC rest on very few images."
        )
    if missing:
        names = ", ".join(f"'{name}'" for name in missing)
        out.append(
            f"No images of {names} in this split: {'its' if len(missing) == 1 else 'their'} "
            "recall and AUC are undefined"
            + ("; the macro AUC averages the other classes." if macro_auc is not None else ".")
        )
    if macro_auc is None and n:
        out.append(
            "The AUC is undefined on this split: no class has both positive and "
            "negative images in it."
        )
    return out
