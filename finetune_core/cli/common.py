"""What several CLI commands share: opening the workspace a command names, and who the
command-line user is."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from finetune_core.config import ConfigError, RunConfig
from finetune_core.store import CLI_CREATOR_PREFIX, Workspace, default_workspace_root, is_workspace
from finetune_core.store_health import has_entries


def workspace_root(arg: str | None) -> Path:
    return Path(arg).expanduser().resolve() if arg else default_workspace_root()


def open_workspace(arg: str | None) -> Workspace | None:
    """The existing workspace ``arg`` (or the default) names; None, with the message
    printed, when there is none (commands that read never create one)."""
    root = workspace_root(arg)
    # dataset or run folders without a database: opening the workspace rebuilds it
    if not is_workspace(root) and not has_entries(root / "datasets", root / "runs"):
        print(
            f"error: there is no workspace at {root}; pass --workspace, or set "
            "FINETUNE_WORKSPACE to the folder the dashboard uses.",
            file=sys.stderr,
        )
        return None
    return Workspace(root)


def cli_creator() -> str:
    """``cli:<os user>``: who trained a run from the command line."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        name = os.environ.get("USER") or f"uid{os.getuid()}"
    return CLI_CREATOR_PREFIX + name


MAX_CONFIG_BYTES = 1024 * 1024  # a run config is a few KiB; /dev/zero is not one


def load_config_file(path: Path, *, resuming: bool = False) -> RunConfig:
    """A config file, or ConfigError saying in one line why it cannot be read."""
    what = f"the run folder's config {path}" if resuming else f"the config file {path}"
    if not path.exists():
        hint = (
            "--resume continues a folder a run wrote; train without --resume to start one."
            if resuming
            else "check the path."
        )
        raise ConfigError(f"Cannot read {what}: it does not exist; {hint}")
    if not path.is_file():
        raise ConfigError(f"Cannot read {what}: it is not a regular file.")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"Cannot read {what}: {exc.strerror or exc}.") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{what[0].upper()}{what[1:]} is larger than {MAX_CONFIG_BYTES // 1024} KiB: "
            "not a run config (pass a config.json or run.json a run wrote)."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what[0].upper()}{what[1:]} is not UTF-8 text (byte {exc.start}): pass a "
            "config.json or run.json a run wrote."
        ) from exc
    return RunConfig.from_json(text)
