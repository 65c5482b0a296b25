"""Admin settings (environment variables, else ``st.secrets``): the lowest layer of ``ui``."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st


def setting(name: str, default: str = "") -> str:
    """An admin setting: the environment variable ``name``, else ``st.secrets[name]``."""
    value = os.environ.get(name)
    if value is not None:
        return value
    try:
        if name in st.secrets:
            return str(st.secrets[name])
    except Exception:  # no secrets.toml, or an unreadable one: settings stay at defaults
        pass
    return default


def workspace_root() -> Path:
    return Path(setting("FINETUNE_WORKSPACE", "workspace")).expanduser().resolve()
