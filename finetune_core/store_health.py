"""What can be wrong with a workspace's files, said so that a user can act on it.

``StoreError`` and ``WorkspaceUnavailable`` (re-exported by ``store``), the reading of
SQLite's and the OS's failures, and the hooks ``store`` calls when a workspace opens
(``workspace_repair`` registers the rebuild and the start-up tidy-up).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any


class StoreError(Exception):
    """A workspace operation could not be done; the message says why."""


class WorkspaceUnavailable(StoreError):
    """The workspace cannot be opened (a read-only folder, a damaged database).

    ``reason`` and ``advice`` name no server path (pages show them to anybody); the
    message (``str()``) adds the folder, for the CLI and the logs.
    """

    def __init__(self, root: Path, reason: str, advice: str) -> None:
        self.root, self.reason, self.advice = root, reason, advice
        super().__init__(f"The workspace at {root} {reason} {advice}")

    @property
    def public(self) -> str:
        return f"The workspace {self.reason} {self.advice}"


READ_ONLY_ADVICE = (
    "Make the workspace folder and its workspace.db writable by the user that runs the "
    "dashboard, or point FINETUNE_WORKSPACE at a writable folder."
)
DAMAGED_ADVICE = (
    "Restore the latest backup with `python -m finetune_core workspace restore`, or "
    "rebuild the index from the run and dataset folders with `python -m finetune_core "
    "workspace rebuild` (see docs/reliability.md)."
)


def unavailable(root: Path, exc: BaseException) -> WorkspaceUnavailable:
    """What a failure to open the workspace ``root`` means for the user."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.DatabaseError) and any(
        word in text for word in ("not a database", "malformed", "corrupt")
    ):
        return WorkspaceUnavailable(root, f"has a damaged database ({exc}).", DAMAGED_ADVICE)
    if isinstance(exc, OSError) or "readonly" in text or "unable to open" in text:
        detail = "read-only" if isinstance(exc, PermissionError) else str(exc)
        return WorkspaceUnavailable(root, f"cannot be written ({detail}).", READ_ONLY_ADVICE)
    return WorkspaceUnavailable(
        root, f"cannot be opened ({type(exc).__name__}: {exc}).", DAMAGED_ADVICE
    )


def file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, None when it is missing: tells a replaced file apart."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def has_entries(*folders: Path) -> bool:
    return any(any(True for _ in folder.iterdir()) for folder in folders if folder.is_dir())


# hook(workspace, index_lost) each time a workspace opens its database; index_lost: the
# database was missing while dataset or run folders exist.
OpenHook = Callable[[Any, bool], None]
_OPEN_HOOKS: list[OpenHook] = []


def on_open(hook: OpenHook) -> None:
    """Call ``hook`` whenever a workspace opens (registered once)."""
    if hook not in _OPEN_HOOKS:
        _OPEN_HOOKS.append(hook)


def run_open_hooks(workspace: Any, index_lost: bool) -> None:
    for hook in list(_OPEN_HOOKS):
        hook(workspace, index_lost)
