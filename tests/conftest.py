"""Shared fixtures (a fresh workspace per test), the rule that keeps ``make test-fast``
fast (a test not marked ``slow`` must not train a model: ``Trainer.fit`` fails it), and
test isolation: ``sys.modules["__main__"]`` is put back after every test."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_core.store import Workspace
from finetune_core.training.trainer import Trainer

# Streamlit's AppTest runs app.py as ``__main__`` and leaves it there; a "spawn" process
# started by a later test would then run the whole app (and its job manager) on import.
MAIN_MODULE = sys.modules["__main__"]

TRAINS = "{} trains a model (Trainer.fit): mark it @pytest.mark.slow so make test-fast stays fast"


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    root = tmp_path / "ws"
    monkeypatch.setenv("FINETUNE_WORKSPACE", str(root))
    return Workspace(root)


@pytest.fixture(scope="module", autouse=True)
def _no_run_process_outlives_its_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run processes belong to their workspace and outlive the server or manager that
    started them (by design): end the ones this module's tests left in their temporary
    workspaces, so none trains on into later tests."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    leftovers = [pid for pid, cmd in run_processes() if base in cmd]
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_processes() -> list[tuple[int, str]]:
    """(pid, command line) of every ``runs exec`` process on this machine."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "finetune_core" in cmd and " runs exec " in cmd:
            found.append((int(entry), cmd))
    return found


@pytest.fixture(autouse=True)
def _restore_main_module() -> Iterator[None]:
    yield
    sys.modules["__main__"] = MAIN_MODULE


@contextlib.contextmanager
def _no_training(item: pytest.Item) -> Iterator[list[str]]:
    """While a non-slow test (or its fixtures) runs, ``Trainer.fit`` records and raises."""
    seen: list[str] = []
    if item.get_closest_marker("slow") is not None:
        yield seen
        return
    original = Trainer.fit

    def refuse(self: Trainer) -> Any:
        seen.append(item.nodeid)
        raise RuntimeError(TRAINS.format(item.nodeid))

    Trainer.fit = refuse  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        Trainer.fit = original  # type: ignore[method-assign]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _no_training(item) as seen:
        outcome = yield
    if seen:
        outcome.force_exception(pytest.fail.Exception(TRAINS.format(item.nodeid)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _no_training(item) as seen:
        outcome = yield
    if seen:  # even where the test caught the error (a job thread marks the run FAILED)
        outcome.force_exception(pytest.fail.Exception(TRAINS.format(item.nodeid)))
