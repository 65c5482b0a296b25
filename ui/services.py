"""Server-wide objects and settings for the pages.

The workspace and the job manager live in ``st.cache_resource``: one per server
process and workspace folder, shared by every browser session, so a job belongs to
the server and survives refreshes, closed tabs and a second teammate's browser.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from finetune_core import runs as run_files
from finetune_core import workspace_repair  # noqa: F401 (its open hook: rebuild and tidy-up)
from finetune_core.auth.access import User, public_error
from finetune_core.evaluation.evaluate import read_predictions
from finetune_core.evaluation.predict import explain_image
from finetune_core.jobs.manager import JobManager
from finetune_core.jobs.postrun import DEFAULT_HOOKS
from finetune_core.models.availability import WeightsAvailability, imagenet_availability
from finetune_core.models.classifier import list_architectures
from finetune_core.models.loaded import LoadedModel, load_run_model
from finetune_core.runs import RunError, RunFolder, RunPaths
from finetune_core.store import RunRecord, RunStatus, Workspace
from finetune_core.store_health import StoreError, WorkspaceUnavailable, unavailable
from finetune_core.workspace_backup import integrity_problems
from ui.auth import access_settings, require_login
from ui.auth import current_user as auth_current_user
from ui.settings import workspace_root


def allow_server_paths() -> bool:
    return access_settings().allow_server_paths


def allow_custom_backbones() -> bool:
    return access_settings().allow_custom_backbones


@st.cache_resource(show_spinner=False)
def _open_workspace(root: str) -> Workspace:
    # Once per server: opening rebuilds a lost index and takes the periodic backup; the
    # quick check catches damage the open itself does not read (a failure is not cached,
    # so the next page load tries again once the workspace is fixed).
    workspace = Workspace(root)
    problems = integrity_problems(workspace.db_path, quick=True)
    if problems:
        workspace.close()
        raise unavailable(workspace.root, sqlite3.DatabaseError(f"malformed: {problems[0]}"))
    return workspace


def _shutdown(manager: JobManager) -> None:
    manager.shutdown(timeout=30)


@st.cache_resource(show_spinner=False, on_release=_shutdown)
def _start_manager(root: str) -> JobManager:
    return JobManager(_open_workspace(root), post_run=list(DEFAULT_HOOKS))


WORKSPACE_HELP = (
    "An administrator can run `python -m finetune_core workspace check` on the server "
    "for details; this page works again once the workspace is fixed."
)


def require_workspace() -> Workspace:
    """The server's workspace; on a page, one clear message and a stop when it cannot be
    opened (a read-only folder, a damaged database), never a crash box. No server path
    is shown: nobody is known to be signed in yet."""
    try:
        return _open_workspace(str(workspace_root()))
    except StoreError as exc:
        if get_script_run_ctx() is None:
            raise
        text = exc.public if isinstance(exc, WorkspaceUnavailable) else str(exc)
        st.error(f"{text}\n\n{WORKSPACE_HELP}", icon=":material/database:")
        st.stop()
        raise  # st.stop() does not return


def get_workspace() -> Workspace:
    # Every page calls this first. Page scripts live in views/ (Streamlit would serve a
    # pages/ folder on its own, without app.py's gate); asking for sign-in here as well
    # keeps any page that is ever run directly behind the gate too. The workspace is
    # opened first: sign-in reads the accounts from it.
    workspace = require_workspace()
    if get_script_run_ctx() is not None:
        require_login()
    return workspace


def val_accuracy(record: RunRecord) -> float | None:
    """The run's validation accuracy as runs.py (its one owner) reads it, for every page."""
    return run_files.val_accuracy(
        RunPaths(get_workspace().run_dir(record.id)),
        record.best_val_accuracy,
        training=record.status in RunStatus.ACTIVE,
    )


def get_job_manager() -> JobManager:
    require_workspace()
    return _start_manager(str(workspace_root()))


def uploads_dir() -> Path:
    """Where uploaded weight files are kept (inside the workspace, names chosen by us)."""
    folder = get_workspace().root / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def user() -> User:
    """The signed-in user (see ui.auth; in open mode everybody is an admin)."""
    return auth_current_user()


def current_user() -> str:
    """The name recorded as creator of what this user makes."""
    return user().name


def public(message: str) -> str:
    """An error message fit for this user: server paths hidden from non-admins."""
    return public_error(message, user(), roots=[str(workspace_root())])


@st.cache_data(ttl=60, show_spinner=False)
def architectures() -> list:
    """The architecture zoo with cached-weights status."""
    return list_architectures()


def imagenet_cached(model: str) -> bool:
    return any(a.name == model and getattr(a, "cached", False) for a in architectures())


@st.cache_data(ttl=300, show_spinner="Checking whether the weights can be downloaded…")
def weights_availability(model: str) -> WeightsAvailability:
    """Cached here or downloadable (the probe is asked again after five minutes)."""
    return imagenet_availability(model)


def has_model(run_id: str) -> bool:
    """Whether the workspace run has a saved model (its best checkpoint)."""
    return RunPaths(get_workspace().run_dir(run_id)).has_model()


def finished_runs_with_model() -> list[RunRecord]:
    """Runs that are not queued or training and have a saved model, newest first."""
    return [r for r in get_workspace().list_runs() if r.status not in RunStatus.ACTIVE
            and has_model(r.id)]  # fmt: skip


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def _load_model(run_dir: str, mtime: float) -> LoadedModel:
    return load_run_model(RunFolder(run_dir), "best")


def load_model(run_dir: Path) -> LoadedModel:
    """The run's best model (cached per checkpoint file; raises RunError)."""
    checkpoint = RunFolder(run_dir).checkpoint_path("best")
    try:
        mtime = checkpoint.stat().st_mtime
    except OSError as exc:
        raise RunError("This run has no saved model (it ended before its first epoch).") from exc
    return _load_model(str(run_dir), mtime)


@st.cache_data(max_entries=256, show_spinner=False)
def activation_pngs(run_dir: str, mtime: float, image: str) -> tuple[bytes, bytes, str, str, str]:
    """Grad-CAM (or saliency) of one image by the run's best model (cached per checkpoint
    version): (image PNG, overlay PNG, predicted label, note, method: "grad-cam"|"saliency")."""
    result = explain_image(load_model(Path(run_dir)), image)
    encoded = []
    for picture in (result.image, result.overlay):
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    prob = f" ({result.probability:.2f})" if result.probability is not None else ""
    return encoded[0], encoded[1], f"{result.class_name}{prob}", result.note, result.method


@st.cache_data(max_entries=16, show_spinner=False)
def _predictions(run_dir: str, mtime: float) -> list[dict]:
    return read_predictions(RunFolder(run_dir))


def predictions(run_dir: Path) -> list[dict]:
    """predictions.csv of an evaluated run (cached per file version)."""
    try:
        mtime = RunPaths(Path(run_dir)).predictions.stat().st_mtime
    except OSError:
        return []
    return _predictions(str(run_dir), mtime)
