"""Dataset fingerprint: a hash of what training sees (contents, names, order, labels, splits)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from finetune_core.data.manifest import ManifestRow

FINGERPRINT_VERSION = "v2"


def dataset_fingerprint(rows: Iterable[ManifestRow], class_names: list[str]) -> str:
    """sha256 over the class list and, in manifest order, the (path, sha256, label, split)
    of every usable image.

    Training reads the images in manifest order (the order of their names), so names and
    order are part of the fingerprint: the same fingerprint and the same seed give the same
    batches and the same numbers. Unusable files do not count. (v1 hashed sorted contents
    only, so renaming a file reordered training without changing the fingerprint.)
    """
    digest = hashlib.sha256()
    header = [FINGERPRINT_VERSION, sorted(class_names)]
    digest.update(json.dumps(header, ensure_ascii=False).encode("utf-8"))
    for r in rows:
        if r.ok:
            digest.update(json.dumps([r.path, r.sha256, r.label, r.split]).encode("utf-8"))
            digest.update(b"\n")
    return digest.hexdigest()
