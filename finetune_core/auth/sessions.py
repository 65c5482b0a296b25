"""Server-side sign-in sessions: one record per "stay signed in" cookie, revocable.

A cookie alone cannot be taken back: a copy keeps working until it expires. So every
cookie names a session (a random id) and counts only while that session's record is in
the workspace. Records live in the ``settings`` table as JSON, one key per account
(``sessions:<identity key>``), written inside ``Workspace.transaction()`` so several
servers sharing a workspace see one truth. Signing out ends the tab's session; a
password change or disabling the account ends all of them (``auth.accounts``); an
admin lists and ends them on the Users page.

The secret id is only in the cookie; the table keeps its SHA-256, and the public id
shown to admins is a prefix of that hash, so reading the database (or a backup) gives
nobody a working cookie. Sessions expire with their cookie and are pruned on write;
an account keeps at most :data:`MAX_SESSIONS` (the oldest goes first).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from finetune_core.auth.access import identity_key
from finetune_core.auth.session_token import DEFAULT_LIFETIME_S
from finetune_core.store import Workspace

KEY_PREFIX = "sessions:"
MAX_SESSIONS = 20
MAX_LABEL_CHARS = 120
TOUCH_EVERY_S = 300  # "last seen" is written at most this often (a write per rerun is too many)
_PUBLIC_ID_CHARS = 16


@dataclass(frozen=True)
class Session:
    """One signed-in browser. ``id`` is public (safe to show); the cookie holds the secret."""

    id: str
    user: str
    created: float
    expires: float
    last_seen: float
    label: str = ""

    @property
    def created_at(self) -> str:
        return _iso(self.created)

    @property
    def last_seen_at(self) -> str:
        return _iso(self.last_seen)

    @property
    def expires_at(self) -> str:
        return _iso(self.expires)


def public_id(secret_id: str) -> str:
    """The id a session is listed and ended by (a prefix of the secret's SHA-256)."""
    return _digest(secret_id)[:_PUBLIC_ID_CHARS]


def start(
    workspace: Workspace,
    name: str,
    *,
    label: str = "",
    lifetime_s: int = DEFAULT_LIFETIME_S,
    now: float | None = None,
) -> tuple[str, Session]:
    """A new session for account ``name``: (its secret id for the cookie, its record)."""
    now = time.time() if now is None else now
    secret_id = secrets.token_urlsafe(24)  # [A-Za-z0-9_-]: safe inside a cookie token
    record = {
        "hash": _digest(secret_id),
        "created": now,
        "expires": now + lifetime_s,
        "seen": now,
        "label": " ".join(str(label).split())[:MAX_LABEL_CHARS],
    }
    with workspace.transaction() as conn:
        kept = _live(_load(conn, name), now)
        kept.append(record)
        kept = sorted(kept, key=lambda r: r["created"])[-MAX_SESSIONS:]
        _save(conn, name, kept)
    return secret_id, _session(name, record)


def is_live(workspace: Workspace, name: str, secret_id: str, *, now: float | None = None) -> bool:
    """Whether ``secret_id`` is a session of ``name`` that has not ended or expired. Marks
    it seen (at most every :data:`TOUCH_EVERY_S` seconds)."""
    if not secret_id or not name.strip():
        return False
    now = time.time() if now is None else now
    wanted = _digest(secret_id)
    records = _load(workspace.read(), name)
    record = next((r for r in records if secrets.compare_digest(r["hash"], wanted)), None)
    if record is None or record["expires"] <= now:
        return False
    if now - record["seen"] >= TOUCH_EVERY_S:
        _touch(workspace, name, wanted, now)
    return True


def list_sessions(workspace: Workspace, name: str, *, now: float | None = None) -> list[Session]:
    """``name``'s live sessions, newest first."""
    now = time.time() if now is None else now
    records = _live(_load(workspace.read(), name), now)
    return [_session(name, r) for r in sorted(records, key=lambda r: -r["created"])]


def end(workspace: Workspace, name: str, session_id: str) -> bool:
    """End one session, given its public id or its secret id; True if it was live."""
    if not session_id:
        return False
    candidates = {session_id, public_id(session_id)}
    with workspace.transaction() as conn:
        records = _load(conn, name)
        kept = [r for r in records if r["hash"][:_PUBLIC_ID_CHARS] not in candidates]
        if len(kept) == len(records):
            return False
        _save(conn, name, kept)
    return True


def end_all(workspace: Workspace, name: str, *, conn: sqlite3.Connection | None = None) -> int:
    """End every session of ``name`` (sign-out everywhere, password change, disabling);
    returns how many were live. ``conn``: inside a caller's open transaction."""
    if conn is not None:
        return _end_all(conn, name)
    with workspace.transaction() as own:
        return _end_all(own, name)


def _end_all(conn: sqlite3.Connection, name: str) -> int:
    count = len(_live(_load(conn, name), time.time()))
    conn.execute("DELETE FROM settings WHERE key = ?", (_key(name),))
    return count


# ----------------------------------------------------------------------------- storage
def _key(name: str) -> str:
    return KEY_PREFIX + identity_key(name)


def _digest(secret_id: str) -> str:
    return hashlib.sha256(secret_id.encode("utf-8")).hexdigest()


def _load(conn: sqlite3.Connection, name: str) -> list[dict[str, Any]]:
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (_key(name),)).fetchone()
    if row is None:
        return []
    try:
        data = json.loads(row[0])
    except (TypeError, ValueError):
        return []  # a damaged record signs nobody in
    return [r for r in data if _well_formed(r)] if isinstance(data, list) else []


def _well_formed(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("hash"), str)
        and len(record["hash"]) == 64
        and all(isinstance(record.get(k), (int, float)) for k in ("created", "expires", "seen"))
    )


def _save(conn: sqlite3.Connection, name: str, records: list[dict[str, Any]]) -> None:
    if not records:
        conn.execute("DELETE FROM settings WHERE key = ?", (_key(name),))
        return
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
        (_key(name), json.dumps(records, separators=(",", ":"))),
    )


def _live(records: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    return [r for r in records if r["expires"] > now]


def _touch(workspace: Workspace, name: str, digest: str, now: float) -> None:
    with workspace.transaction() as conn:
        records = _load(conn, name)
        for record in records:
            if record["hash"] == digest:
                record["seen"] = now
        _save(conn, name, _live(records, now))


def _session(name: str, record: dict[str, Any]) -> Session:
    return Session(
        id=record["hash"][:_PUBLIC_ID_CHARS],
        user=name,
        created=float(record["created"]),
        expires=float(record["expires"]),
        last_seen=float(record["seen"]),
        label=str(record.get("label") or ""),
    )


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")
