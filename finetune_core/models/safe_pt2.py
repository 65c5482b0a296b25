"""Load ``torch.export`` programs (.pt2) without running code from the file.

``torch.export.load`` unpickles parts of an archive with ``weights_only=False`` (weights
or constants flagged ``use_pickle``, the sample inputs, the pre-2.6 layout), unpickles
"opaque" constants with plain ``pickle``, and loads compiled AOTInductor libraries. A
hostile .pt2 could therefore run code the moment it is loaded. :func:`check_archive`
first reads every pickle in the archive with ``torch.load(weights_only=True)`` and
refuses custom objects and native libraries; only then does :func:`load_program` call
``torch.export.load``.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import torch

_NATIVE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia")
_OBJECT_PREFIXES = ("custom_obj_", "opaque_obj_")
_CONFIG_DIRS = ("data/weights/", "data/constants/")


class UnsafeProgramError(ValueError):
    """The .pt2 file holds something that would run code when loaded."""


def load_program(path: str | Path) -> Any:
    """``torch.export.load(path)`` after :func:`check_archive` found nothing executable."""
    check_archive(path)
    return torch.export.load(str(path))


def check_archive(path: str | Path) -> None:
    """Raise UnsafeProgramError if loading ``path`` could run code from it.

    A file that is not a zip is left for ``torch.export.load`` to refuse (it unpickles
    nothing from such a file).
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    with archive:
        members = {_relative(name): name for name in archive.namelist()}
        for rel, name in members.items():
            if rel.startswith(_NATIVE_DIRS):
                raise UnsafeProgramError(
                    f"{path.name} contains compiled native code ({name}); only plain "
                    "torch.export programs are accepted. Export with torch.export.save."
                )
            if rel.endswith((".pt", ".pth", ".pkl")):
                _check_pickle(archive, name, path.name)
            if rel.startswith(_CONFIG_DIRS) and rel.endswith("_config.json"):
                _check_payload_config(archive, members, rel, path.name)


def _relative(name: str) -> str:
    """An archive member's path below the archive's top folder ("pkg/data/x" -> "data/x")."""
    return name.split("/", 1)[1] if "/" in name else name


def _check_payload_config(
    archive: zipfile.ZipFile, members: dict[str, str], rel: str, display: str
) -> None:
    folder = rel.rsplit("/", 1)[0] + "/"
    try:
        config = json.loads(archive.read(members[rel])).get("config", {})
        entries = list(config.items())
    except (ValueError, AttributeError) as exc:
        raise UnsafeProgramError(f"{display} has an unreadable {rel}: {exc}") from exc
    for fqn, meta in entries:
        file = str((meta or {}).get("path_name", ""))
        if file.startswith(_OBJECT_PREFIXES):
            raise UnsafeProgramError(
                f"{display} stores a Python object ({fqn}) that would be unpickled, and could "
                "run code, when loaded; a backbone may hold only tensors."
            )
        if (meta or {}).get("use_pickle") and folder + file in members:
            _check_pickle(archive, members[folder + file], display)


def _check_pickle(archive: zipfile.ZipFile, name: str, display: str) -> None:
    data = archive.read(name)
    if not data:  # torch reads an empty artifact as {} without unpickling
        return
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UnsafeProgramError(
            f"{display} contains pickled data ({name}) that is not plain tensors; loading it "
            "could run code from the file, so it was refused. Re-export the backbone with "
            "torch.export.save from a trusted environment."
        ) from exc
