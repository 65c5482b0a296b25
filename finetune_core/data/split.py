"""Stratified, deterministic train/val/test split that keeps exact duplicates together."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from typing import Any

from finetune_core.data.manifest import ManifestRow

# The hold-out share the Data page and the CLI offer when the data's own split has no test.
HOLDOUT_DEFAULT = 0.15
HOLDOUT_MAX = 0.5


@dataclass(frozen=True)
class SplitSpec:
    """Fractions for the automatic split, and its seed. A split the user gave is kept.

    ``holdout``: when the user's own split has no test part, this share of each class's
    train images (stratified, seeded) becomes the test split; 0 keeps no test split.
    """

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    holdout: float = 0.0

    @classmethod
    def from_fractions(
        cls, val: float = 0.1, test: float = 0.1, seed: int = 0, holdout: float = 0.0
    ) -> SplitSpec:
        """Train gets what val and test leave."""
        return cls(
            train=round(1.0 - val - test, 10), val=val, test=test, seed=seed, holdout=holdout
        )

    def problems(self) -> list[str]:
        out = []
        for name in ("train", "val", "test"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or math.isnan(value) or not 0 <= value <= 1:
                out.append(f"The {name} fraction must be between 0 and 1 (got {value!r}).")
        if out:
            return out
        if self.train <= 0:
            out.append(
                "The train fraction must be above 0: val + test must leave images to train on."
            )
        if self.val <= 0:
            out.append("The val fraction must be above 0: validation picks the best epoch.")
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            out.append(
                f"The split fractions must add up to 1 (train {self.train} + val {self.val} + "
                f"test {self.test} = {self.train + self.val + self.test:g})."
            )
        if not isinstance(self.seed, int):
            out.append(f"The split seed must be an integer (got {self.seed!r}).")
        holdout = self.holdout
        if (
            not isinstance(holdout, (int, float))
            or math.isnan(holdout)
            or not (0 <= holdout <= HOLDOUT_MAX)
        ):
            out.append(
                f"The test hold-out must be between 0 and {HOLDOUT_MAX:g} (got {holdout!r})."
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitSpec:
        names = ("train", "val", "test", "seed", "holdout")
        return cls(**{k: data[k] for k in names if k in data})


def quotas(n: int, spec: SplitSpec) -> tuple[int, int]:
    """(val, test) image counts for a class of ``n`` images.

    Val gets at least one image once a class has 2, test once it has 4, and train always
    keeps at least one.
    """
    n_val = math.floor(n * spec.val + 0.5)
    n_test = math.floor(n * spec.test + 0.5)
    if spec.val > 0 and n >= 2:
        n_val = max(1, n_val)
    if spec.test > 0 and n >= 4:
        n_test = max(1, n_test)
    while n - n_val - n_test < 1 and n_test > 0:
        n_test -= 1
    while n - n_val - n_test < 1 and n_val > 0:
        n_val -= 1
    return n_val, n_test


def holds_out_test(rows: list[ManifestRow], spec: SplitSpec) -> bool:
    """Whether ``assign_splits`` moves ``spec.holdout`` of the user's train split to test:
    the data came with its own split, none of it test, and the automatic split of the
    rest (if any) makes no test split either."""
    usable = [r for r in rows if r.ok]
    if spec.holdout <= 0 or not any(r.split for r in usable):
        return False
    if any(r.split == "test" for r in usable):
        return False
    return spec.test <= 0 or all(r.split for r in usable)


def assign_splits(rows: list[ManifestRow], spec: SplitSpec) -> tuple[list[ManifestRow], bool]:
    """Give every usable row without a split one; return the rows and whether val was carved
    out of a user-provided train split (the user gave train/test but no val).

    When :func:`holds_out_test`, a share of the user's train split becomes the test split.
    Per class, groups of identical files (same sha256) are shuffled with a seed derived
    from ``spec.seed`` and the class name, so the result depends only on content, labels
    and seed, never on file names or order. Copies of one file never straddle splits.
    """
    rows = list(rows)
    usable = [i for i, r in enumerate(rows) if r.ok]
    fixed = {i for i in usable if rows[i].split}
    holdout = spec.holdout if holds_out_test(rows, spec) else 0.0
    carved = bool(fixed) and not any(rows[i].split == "val" for i in usable)
    if carved or holdout:
        # The user split lacks validation (carved from their train part, in the automatic
        # split's proportion) and/or test (the hold-out share of their train part).
        train_rows = [i for i in usable if rows[i].split == "train"]
        val_share = spec.val / (spec.train + spec.val) if carved else 0.0
        carve_spec = SplitSpec(
            train=1.0 - val_share - holdout, val=val_share, test=holdout, seed=spec.seed
        )
        _assign(rows, train_rows, carve_spec)
        fixed -= set(train_rows)
    pending = [i for i in usable if not rows[i].split]
    _assign(rows, pending, spec)
    _keep_copies_together(rows, [i for i in usable if i not in fixed], fixed)
    return rows, carved


def _assign(rows: list[ManifestRow], indices: list[int], spec: SplitSpec) -> None:
    by_class: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i in indices:
        by_class[rows[i].label][rows[i].sha256].append(i)
    for label, groups in by_class.items():
        keys = sorted(groups)
        random.Random(f"{spec.seed}\x00{label}").shuffle(keys)
        n = sum(len(groups[k]) for k in keys)
        n_val, n_test = quotas(n, spec)
        got = {"val": 0, "test": 0}
        for position, key in enumerate(keys):
            if position == 0:
                split = "train"  # every class keeps at least one training image
            elif got["val"] < n_val:
                split = "val"
            elif got["test"] < n_test:
                split = "test"
            else:
                split = "train"
            if split in got:
                got[split] += len(groups[key])
            for i in groups[key]:
                rows[i] = replace(rows[i], split=split)


def _keep_copies_together(rows: list[ManifestRow], assigned: list[int], fixed: set[int]) -> None:
    """Identical files with different labels were split per class; reunite them."""
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i in [*assigned, *sorted(fixed)]:
        by_sha[rows[i].sha256].append(i)
    for members in by_sha.values():
        if len({rows[i].split for i in members}) < 2:
            continue
        pinned = [rows[i].split for i in members if i in fixed]
        target = pinned[0] if pinned else "train"
        for i in members:
            if i not in fixed:
                rows[i] = replace(rows[i], split=target)
