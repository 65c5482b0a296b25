"""Shared fixtures: a fresh workspace per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_core.store import Workspace


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    root = tmp_path / "ws"
    monkeypatch.setenv("FINETUNE_WORKSPACE", str(root))
    return Workspace(root)
