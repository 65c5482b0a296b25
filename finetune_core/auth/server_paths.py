"""Admin-only features that read the server's files: the checks, in the core.

Importing from a server folder, naming a weights file or a run folder on the server, and
uploading a custom ``.pt2`` backbone (a whole model program) are for admins. Pages hide
those widgets from others, but the rule lives here: each function takes the User and
raises PermissionDenied, so a page that forgets to hide a widget (or a config file that
names a path) still cannot reach the files.

Errors never describe a path the user may not read. A non-admin is refused before any
file is looked at, with one message whatever the path; an admin's path outside the
allowed roots (``AccessSettings.server_path_roots``), missing or unreadable gets one
message too, "not found or not allowed", so no answer tells ``/etc`` from a path that
does not exist.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from finetune_core.auth.access import (
    AccessSettings,
    PermissionDenied,
    User,
    check_custom_backbone_allowed,
    check_server_path_allowed,
)
from finetune_core.runs import NAMED_WEIGHTS
from finetune_core.store import Workspace

SERVER_IMPORT_ADMINS_ONLY = (
    "Importing from a folder on the server is for admins. Upload the images instead (a "
    "zip, a folder or class by class), or ask an admin to import the folder for you."
)
BACKBONE_ADMINS_ONLY = (
    "Custom .pt2 backbones are for admins (a .pt2 file is a whole model program, not just "
    "weights). Ask an admin to start this run, or choose ImageNet weights or a state_dict."
)
WEIGHTS_NOT_ALLOWED = (
    "The weights file named in these settings was not found or is not allowed: only files "
    "uploaded on the Setup page can be used. Upload the weights file under Model."
)
INIT_FROM_NOT_ALLOWED = (
    "'Start from' names no run of this workspace (or a folder you may not use): choose a "
    "finished run under Advanced settings > Start from run."
)
UPLOADS_DIR = "uploads"  # the workspace folder the Setup page saves weight uploads in
_CHECKPOINT_SUFFIXES = (":best", ":last")


def not_found_or_not_allowed(shown: str) -> str:
    """The one message for a server path that is missing, unreadable or outside the roots."""
    return (
        f"{shown}: not found or not allowed. Give a folder, .zip or .csv inside a folder "
        "this server may import from (an admin sets FINETUNE_SERVER_PATH_ROOTS)."
    )


def check_server_import(settings: AccessSettings, user: User, raw: str | os.PathLike) -> Path:
    """The real path to import ``raw`` from, for an admin with server paths switched on.

    PermissionDenied otherwise: non-admins with :data:`SERVER_IMPORT_ADMINS_ONLY` before
    anything is read; a path that is missing, unreadable or outside the allowed roots
    with :func:`not_found_or_not_allowed`.
    """
    if not user.is_admin:
        raise PermissionDenied(SERVER_IMPORT_ADMINS_ONLY)
    check_server_path_allowed(settings)
    return readable_server_path(settings, raw)


def readable_server_path(settings: AccessSettings, raw: str | os.PathLike) -> Path:
    """``raw`` resolved (links followed), if it lies in the allowed roots and this server
    can read it; else PermissionDenied, with the same message for every reason."""
    text = os.fspath(raw).strip() if isinstance(raw, (str, os.PathLike)) else ""
    shown = repr(text[:200]) if text else "An empty path"
    if not text or "\x00" in text:
        raise PermissionDenied(not_found_or_not_allowed(shown))
    path = Path(os.path.realpath(os.path.expanduser(text)))
    if not _inside(path, settings.server_path_roots):
        raise PermissionDenied(not_found_or_not_allowed(shown))
    needs = os.R_OK | (os.X_OK if path.is_dir() else 0)
    if not (path.is_dir() or path.is_file()) or not os.access(path, needs):
        raise PermissionDenied(not_found_or_not_allowed(shown))
    return path


def check_backbone_upload(settings: AccessSettings, user: User) -> None:
    """Uploading a custom ``.pt2`` backbone: admins, once custom backbones are switched on."""
    if not user.is_admin:
        raise PermissionDenied(BACKBONE_ADMINS_ONLY)
    check_custom_backbone_allowed(settings)


def check_config_paths(
    settings: AccessSettings, user: User, config: Any, workspace: Workspace
) -> None:
    """A run's config names only files ``user`` may use (call before submitting it).

    ``config`` is a RunConfig (its ``weights``, ``model`` and ``init_from``). Anyone may
    use a weights file saved by the Setup page's upload (under the workspace's uploads
    folder) and a workspace run's own copy (a continued run's backbone); other weights
    files and run folders on the server are for admins (inside the allowed roots), a
    custom backbone that is not a run's own copy only for those who may upload one.
    """
    weights = str(getattr(config, "weights", "") or "")
    custom = weights.endswith(".pt2") or getattr(config, "model", "") == "custom"
    if weights not in NAMED_WEIGHTS:
        where = _workspace_place(workspace, weights)
        if custom and where != "run":
            check_backbone_upload(settings, user)
        if where is None:
            if not user.is_admin:
                raise PermissionDenied(WEIGHTS_NOT_ALLOWED)
            readable_server_path(settings, weights)
    elif custom:
        check_backbone_upload(settings, user)
    init_from = str(getattr(config, "init_from", "") or "").strip()
    if init_from:
        ref = _strip_checkpoint(init_from)
        if workspace.get_run(ref) is None:
            if not user.is_admin:
                raise PermissionDenied(INIT_FROM_NOT_ALLOWED)
            readable_server_path(settings, ref)


def _workspace_place(workspace: Workspace, weights: str) -> str | None:
    """``"upload"`` for a file in the workspace's uploads folder, ``"run"`` for one in a
    run folder, None for anything else (links followed first)."""
    if "\x00" in weights:
        return None
    path = Path(os.path.realpath(os.path.expanduser(weights)))
    root = Path(os.path.realpath(workspace.root))
    if _inside(path, (str(root / UPLOADS_DIR),)):
        return "upload"
    if _inside(path, (os.path.realpath(workspace.runs_dir),)):
        return "run"
    return None


def _strip_checkpoint(value: str) -> str:
    for suffix in _CHECKPOINT_SUFFIXES:
        if value.endswith(suffix) and len(value) > len(suffix):
            return value[: -len(suffix)]
    return value


def _inside(path: Path, roots: tuple[str, ...]) -> bool:
    """Whether ``path`` is one of ``roots`` or below one; True when there are no roots."""
    if not roots:
        return True
    return any(path == Path(root) or path.is_relative_to(root) for root in roots)
