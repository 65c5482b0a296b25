"""The health report: what is wrong with a dataset, computed while ingesting.

Errors block training; warnings and infos do not. Each finding says what is wrong,
how many files it affects, which ones (capped), and what to do about it.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from finetune_core.data.layout import Skipped
from finetune_core.data.manifest import ManifestRow

MAX_LISTED_FILES = 200
TINY_CLASS = 5  # usable images below this: warning
IMBALANCE_WARNING = 5.0  # largest / smallest class
CONFLICT_ERROR_FRACTION = 0.10  # conflicting labels above this share of images: error
SMALL_IMAGE = 32  # pixels on the short side

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}

_UNUSABLE_MESSAGES = {
    "not_an_image": (
        "{n} file(s) have an image name but are not images Pillow can read; they are left out "
        "of training. Remove them or replace them with the real images."
    ),
    "truncated": (
        "{n} image(s) are truncated (the file ends early, usually an interrupted download or "
        "copy); they are left out of training. Download or export them again."
    ),
    "unreadable": (
        "{n} image(s) are damaged and cannot be decoded; they are left out of training. Open "
        "them in an image viewer and replace the broken ones."
    ),
    "decompression_bomb": (
        "{n} image(s) have too many pixels, or would need too much memory, to decode safely "
        "(possible decompression bombs); they are left out of training. Resize them or save "
        "them as 8-bit RGB if they are genuine photos."
    ),
    "empty_file": "{n} file(s) are empty (0 bytes); they are left out of training. Upload them again.",
}


@dataclass
class Finding:
    """One problem (or notice) about a dataset."""

    code: str
    severity: str  # error | warning | info
    message: str
    count: int = 0
    files: list[str] = field(default_factory=list)  # source paths, at most MAX_LISTED_FILES
    classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(**{k: data[k] for k in data if k in cls.__dataclass_fields__})


@dataclass
class HealthReport:
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def infos(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "info"]

    @property
    def blocks_training(self) -> bool:
        return bool(self.errors)

    @property
    def status(self) -> str:
        """``error``, ``warning`` or ``ok`` (the DatasetRecord's ``health``)."""
        return "error" if self.errors else "warning" if self.warnings else "ok"

    def find(self, code: str) -> Finding | None:
        return next((f for f in self.findings if f.code == code), None)

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "blocks_training": self.blocks_training,
            "findings": [f.to_dict() for f in self.findings],
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HealthReport:
        return cls(
            findings=[Finding.from_dict(f) for f in data.get("findings", [])],
            stats=dict(data.get("stats", {})),
        )


def build_report(
    rows: list[ManifestRow],
    class_names: list[str],
    skipped: list[Skipped],
    *,
    val_carved: float | None = None,
) -> HealthReport:
    """Every check over the final manifest (after splitting) and the skipped entries."""
    findings: list[Finding] = []
    usable = [r for r in rows if r.ok]
    findings += _unusable_findings(rows)
    findings += _skipped_findings(skipped)
    findings += _duplicate_findings(usable)
    findings += _class_findings(usable, class_names)
    if val_carved is not None:
        findings.append(
            Finding(
                "val_from_train",
                "info",
                f"The data came with its own split but no validation part, so {val_carved:.0%} "
                "of each class's training images were set aside for validation.",
            )
        )
    findings.sort(key=lambda f: SEVERITY_ORDER.get(f.severity, 3))
    return HealthReport(findings=findings, stats=compute_stats(rows, class_names, skipped))


def _finding(
    code: str, severity: str, message: str, files: list[str], classes: list[str] | None = None
) -> Finding:
    return Finding(code, severity, message, len(files), files[:MAX_LISTED_FILES], classes or [])


def _unusable_findings(rows: list[ManifestRow]) -> list[Finding]:
    by_code: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if not row.ok:
            by_code[row.status].append(row.source or row.path)
    out = []
    for code, files in by_code.items():
        template = _UNUSABLE_MESSAGES.get(
            code, "{n} file(s) cannot be used ({code}); they are left out."
        )
        out.append(_finding(code, "warning", template.format(n=len(files), code=code), files))
    return out


def _skipped_findings(skipped: list[Skipped]) -> list[Finding]:
    by_code: dict[str, list[Skipped]] = defaultdict(list)
    for entry in skipped:
        by_code[entry.code].append(entry)
    out = []
    if entries := by_code.pop("ignored_entry", []):
        reasons = Counter(e.reason for e in entries)
        parts = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        out.append(
            _finding(
                "ignored_entry",
                "info",
                f"{len(entries)} entries were ignored and never become classes ({parts}). "
                "Nothing to do unless you expected some of them to be images.",
                [e.source for e in entries],
            )
        )
    if entries := by_code.pop("nested_archive", []):
        out.append(
            _finding(
                "nested_archive",
                "warning",
                f"{len(entries)} archive(s) inside the upload were not extracted. If they hold "
                "images, extract them and upload their contents instead.",
                [e.source for e in entries],
            )
        )
    if entries := by_code.pop("missing_file", []):
        out.append(
            _finding(
                "missing_file",
                "warning",
                f"{len(entries)} file(s) listed in the CSV do not exist under the images folder; "
                "those rows are left out. Check the paths and the images folder.",
                [e.source for e in entries],
            )
        )
    if entries := by_code.pop("bad_row", []):
        details = "; ".join(e.reason for e in entries[:3])
        out.append(
            _finding(
                "bad_row",
                "warning",
                f"{len(entries)} CSV row(s) were skipped ({details}). Fix them in the CSV.",
                [e.source for e in entries],
            )
        )
    for code, entries in by_code.items():
        out.append(
            _finding(
                code,
                "info",
                f"{len(entries)} entries were skipped ({code}).",
                [e.source for e in entries],
            )
        )
    return out


def _duplicate_findings(usable: list[ManifestRow]) -> list[Finding]:
    by_sha: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in usable:
        by_sha[row.sha256].append(row)
    groups = [g for g in by_sha.values() if len(g) > 1]
    out = []

    within = []
    for group in groups:
        per_label: dict[str, list[ManifestRow]] = defaultdict(list)
        for row in group:
            per_label[row.label].append(row)
        within += [sub for sub in per_label.values() if len(sub) > 1]
    if within:
        files = [r.source for sub in within for r in sub]
        extra = sum(len(sub) - 1 for sub in within)
        out.append(
            _finding(
                "duplicate_in_class",
                "warning",
                f"{extra} image(s) are exact copies of another image in the same class "
                f"({len(within)} group(s), {len(files)} files). Copies add no information and "
                "over-weight those images; delete the extra copies.",
                files,
                sorted({sub[0].label for sub in within}),
            )
        )

    conflicting = [g for g in groups if len({r.label for r in g}) > 1]
    if conflicting:
        files = [r.source for g in conflicting for r in g]
        share = len(files) / max(len(usable), 1)
        severity = "error" if share > CONFLICT_ERROR_FRACTION else "warning"
        labels = sorted({r.label for g in conflicting for r in g})
        why = (
            f" That is {share:.0%} of the images, which usually means a folder was copied into "
            "the wrong class, so training is blocked until it is fixed."
            if severity == "error"
            else ""
        )
        out.append(
            _finding(
                "conflicting_labels",
                severity,
                f"{len(conflicting)} image(s) appear with different labels ({len(files)} files): "
                "the model cannot be right on both copies and accuracy is capped."
                + why
                + " Decide which class each belongs to and delete the other copy.",
                files,
                labels,
            )
        )

    leaking = [g for g in groups if len({r.split for r in g}) > 1]
    if leaking:
        files = [r.source for g in leaking for r in g]
        pairs = sorted({s for g in leaking for s in {r.split for r in g}})
        out.append(
            _finding(
                "split_leakage",
                "warning",
                f"{len(leaking)} image(s) appear in more than one split ({', '.join(pairs)}; "
                f"{len(files)} files): validation and test scores will be too optimistic. "
                "Delete the copies from val/test, or let the dashboard split automatically.",
                files,
            )
        )
    return out


def _class_findings(usable: list[ManifestRow], class_names: list[str]) -> list[Finding]:
    counts = Counter(r.label for r in usable)
    per_split: dict[str, Counter[str]] = defaultdict(Counter)
    for row in usable:
        per_split[row.split][row.label] += 1
    out = []
    if len(class_names) == 1:
        out.append(
            Finding(
                "single_class",
                "error",
                f"Only one class ({class_names[0]!r}) was found; a classifier needs at least 2. "
                "Add a sub-folder (or label) for every class.",
                count=1,
                classes=list(class_names),
            )
        )
    empty = [c for c in class_names if counts[c] == 0]
    if empty:
        out.append(
            Finding(
                "empty_class",
                "error",
                f"{len(empty)} class(es) have no usable images ({_names(empty)}). Add readable "
                "images to them or remove them.",
                count=len(empty),
                classes=empty,
            )
        )
    tiny = [c for c in class_names if 0 < counts[c] < TINY_CLASS]
    if tiny:
        out.append(
            Finding(
                "tiny_class",
                "warning",
                f"{len(tiny)} class(es) have fewer than {TINY_CLASS} usable images ({_names(tiny)}); "
                "the model will barely learn them and their scores are unreliable. Add more "
                "images (20 or more per class is a good start).",
                count=len(tiny),
                classes=tiny,
            )
        )
    no_train = [c for c in class_names if counts[c] and not per_split["train"][c]]
    if no_train:
        out.append(
            Finding(
                "missing_in_train",
                "error",
                f"{len(no_train)} class(es) have images only in val/test, none in train "
                f"({_names(no_train)}); the model cannot learn them. Move some images into train.",
                count=len(no_train),
                classes=no_train,
            )
        )
    no_val = [c for c in class_names if counts[c] and not per_split["val"][c]]
    if no_val:
        out.append(
            Finding(
                "missing_in_val",
                "warning",
                f"{len(no_val)} class(es) have no validation images ({_names(no_val)}), so "
                "validation accuracy does not measure them. Add images to those classes.",
                count=len(no_val),
                classes=no_val,
            )
        )
    present = {c: n for c, n in counts.items() if n > 0}
    if len(present) >= 2:
        largest = max(present, key=lambda c: (present[c], c))
        smallest = min(present, key=lambda c: (present[c], c))
        ratio = present[largest] / present[smallest]
        if ratio >= IMBALANCE_WARNING:
            out.append(
                Finding(
                    "imbalance",
                    "warning",
                    f"The classes are imbalanced: {largest!r} has {present[largest]} images, "
                    f"{ratio:.1f} times as many as {smallest!r} ({present[smallest]}). Use class "
                    "balancing in the run setup (weighted loss or balanced sampler), or add "
                    "images to the small classes.",
                    count=len(present),
                    classes=[largest, smallest],
                )
            )
    return out


def _names(classes: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(c) for c in classes[:limit])
    return shown + (f" and {len(classes) - limit} more" if len(classes) > limit else "")


def compute_stats(
    rows: list[ManifestRow], class_names: list[str], skipped: list[Skipped]
) -> dict[str, Any]:
    """Counts per class and split, imbalance, size/aspect/colour-mode/format statistics."""
    usable = [r for r in rows if r.ok]
    class_counts = {c: 0 for c in class_names}
    split_counts: dict[str, dict[str, int]] = {
        s: {c: 0 for c in class_names} for s in ("train", "val", "test")
    }
    for row in usable:
        class_counts[row.label] = class_counts.get(row.label, 0) + 1
        split_counts.setdefault(row.split, {c: 0 for c in class_names})
        split_counts[row.split][row.label] = split_counts[row.split].get(row.label, 0) + 1
    present = [n for n in class_counts.values() if n > 0]
    widths = [r.width for r in usable]
    heights = [r.height for r in usable]
    aspects = [r.width / r.height for r in usable if r.height]
    return {
        "num_files": len(rows),
        "num_usable": len(usable),
        "num_unusable": len(rows) - len(usable),
        "num_ignored": len(skipped),
        "num_classes": len(class_names),
        "class_counts": class_counts,
        "split_counts": split_counts,
        "split_totals": {s: sum(c.values()) for s, c in split_counts.items()},
        "imbalance_ratio": round(max(present) / min(present), 3) if len(present) >= 2 else None,
        "width": _summary(widths),
        "height": _summary(heights),
        "aspect": _summary(aspects, digits=3),
        "small_images": sum(1 for r in usable if min(r.width, r.height) < SMALL_IMAGE),
        "modes": dict(Counter(r.mode for r in usable).most_common()),
        "formats": dict(Counter(r.format for r in usable).most_common()),
        "total_bytes": sum(r.size for r in rows),
    }


def _summary(values: Sequence[float], digits: int = 1) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
        "mean": round(statistics.fmean(values), digits),
    }
