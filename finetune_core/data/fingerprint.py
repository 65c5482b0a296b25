"""Dataset fingerprint: a hash of what training sees (contents, labels, splits)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from finetune_core.data.manifest import ManifestRow


def dataset_fingerprint(rows: Iterable[ManifestRow], class_names: list[str]) -> str:
    """sha256 over the class list and the sorted (sha256, label, split) of usable images.

    File names and order do not matter; any change of content, label, split or class
    list does.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(["v1", sorted(class_names)], ensure_ascii=False).encode("utf-8"))
    for sha, label, split in sorted((r.sha256, r.label, r.split) for r in rows if r.ok):
        digest.update(json.dumps([sha, label, split], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
