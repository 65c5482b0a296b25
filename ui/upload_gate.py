"""No upload byte is kept for a browser session that has not signed in.

Streamlit (1.67) receives ``st.file_uploader`` files at
``PUT /_stcore/upload_file/<session_id>/<file_id>`` and keeps each one as ``bytes`` in
its ``MemoryUploadedFileManager`` until the browser removes it or the session ends. Its
route checks the XSRF token and ``Runtime.is_active_session(session_id)`` *before* it
reads the body; any browser that opened the app has an active session, signed in or
not. :func:`install` wraps that one check (the upload route is its only caller in
Streamlit 1.67; ``tests/robustness/test_upload_gate.py`` fails if that changes), so a
session that is not in this module's registry is answered 403 before a byte of its
body is read, and uvicorn closes the connection. It also caps the bytes the server
holds for uploads of all sessions together (``FINETUNE_UPLOAD_MEMORY_MB``).

``app.py`` calls :func:`install` once per script run (idempotent; a no-op under
``AppTest``, which has no server), :func:`allow_session` after the sign-in gate has let
the run through and :func:`revoke_session` when the session is not signed in. The
registry is keyed by Streamlit session id and forgets sessions that have ended.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from starlette.exceptions import HTTPException
from streamlit import config, runtime
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.runtime.uploaded_file_manager import UploadedFile, UploadedFileRec

MEMORY_ENV = "FINETUNE_UPLOAD_MEMORY_MB"
SIGN_IN_FIRST = "Sign in before uploading files."

_lock = threading.Lock()
_allowed: set[str] = set()
_installed: list[Any] = []  # the runtime the gate is installed on (one per process)


def default_memory_mb() -> int:
    """Twice ``server.maxUploadSize``: two of the largest files at once."""
    return 2 * int(config.get_option("server.maxUploadSize"))


def memory_budget_bytes() -> int:
    """Bytes all sessions' uploads may hold together: ``FINETUNE_UPLOAD_MEMORY_MB``."""
    raw = os.environ.get(MEMORY_ENV, "").strip()
    try:
        mb = int(raw) if raw else default_memory_mb()
    except ValueError:
        mb = default_memory_mb()  # a typo must not lift the bound
    return max(1, mb) * 1024 * 1024


def decide(session_id: str, *, active: bool) -> int | None:
    """The upload route's answer for ``session_id``: ``None`` to carry on (signed in),
    403 for a live session that has not signed in, ``None`` for an unknown one as well
    (Streamlit's own check answers that with 400)."""
    if not active:
        return None
    with _lock:
        return None if session_id in _allowed else 403


def _current_session_id() -> str | None:
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None


def allow_session(session_id: str | None = None) -> None:
    """Let this script run's session (or ``session_id``) upload; forget ended sessions."""
    session_id = session_id or _current_session_id()
    if not session_id:
        return
    is_active = _original_check()
    with _lock:
        if is_active is not None:
            for ended in [s for s in _allowed if s != session_id and not is_active(s)]:
                _allowed.discard(ended)
        _allowed.add(session_id)


def revoke_session(session_id: str | None = None) -> None:
    """Refuse further uploads from this session and drop the files it holds."""
    session_id = session_id or _current_session_id()
    if not session_id:
        return
    with _lock:
        known = session_id in _allowed
        _allowed.discard(session_id)
    if known and _installed:
        _installed[0].uploaded_file_mgr.remove_session_files(session_id)


def allowed_sessions() -> frozenset[str]:
    """The session ids that may upload now (for tests and the admin's eyes)."""
    with _lock:
        return frozenset(_allowed)


def release(files: UploadedFile | Iterable[UploadedFile] | None) -> int:
    """Drop uploaded files the page has finished with from server memory; returns how
    many. The widget then reads them as deleted: give it a new key to clear it."""
    ctx = get_script_run_ctx()
    remove = getattr(ctx.uploaded_file_mgr, "remove_file", None) if ctx else None
    if ctx is None or remove is None or files is None:
        return 0
    chosen = [files] if isinstance(files, UploadedFile) else list(files)
    done = 0
    for file in chosen:
        if isinstance(file, UploadedFile):
            remove(session_id=ctx.session_id, file_id=file.file_id)
            done += 1
    return done


def _original_check() -> Callable[[str], bool] | None:
    return _installed[1] if _installed else None


def install() -> bool:
    """Put the gate in front of this server's upload route; True once it is there.

    Idempotent and cheap; without a running Streamlit server (``AppTest``, the CLI) it
    does nothing and returns False.
    """
    if not runtime.exists():
        return False
    rt = runtime.get_instance()
    if type(rt) is not Runtime:
        return False  # AppTest's stand-in (a mock): there is no upload route to guard
    with _lock:
        if _installed and _installed[0] is rt:
            return True
        original = rt.is_active_session
        manager = rt.uploaded_file_mgr

        def gated_is_active_session(session_id: str) -> bool:
            active = original(session_id)
            if decide(session_id, active=active) == 403:
                # "close": uvicorn drops the connection instead of holding it open
                # with the unread body paused in its buffers.
                raise HTTPException(
                    status_code=403, detail=SIGN_IN_FIRST, headers={"Connection": "close"}
                )
            return active

        rt.is_active_session = gated_is_active_session  # type: ignore[method-assign]
        _bound_memory(manager)
        _installed[:] = [rt, original]
    return True


def _bound_memory(manager: Any) -> None:
    """Refuse a file that would take the bytes held for all uploads over the budget."""
    add_file = getattr(manager, "add_file", None)
    if add_file is None or not hasattr(manager, "_total_bytes"):
        return  # another manager keeps files elsewhere; nothing to bound here

    def bounded_add_file(session_id: str, file: UploadedFileRec) -> None:
        budget = memory_budget_bytes()
        if manager._total_bytes + len(file.data) > budget:
            raise HTTPException(
                status_code=413,
                detail=f"The server holds {budget // 2**20} MB of uploads already; "
                "try again once other uploads are done, or ask an admin to raise "
                f"{MEMORY_ENV}.",
            )
        add_file(session_id=session_id, file=file)

    manager.add_file = bounded_add_file
