"""The audit log: who did what to which run, dataset or account, and when.

Rows live in the workspace's ``audit`` table (this module is its only writer). Guarded
actions (``auth.access``), account changes (``auth.accounts``) and the job manager's
submissions record themselves here; the Runs page shows a run's entries and the admin
page the whole log.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetune_core.store import Workspace, utc_now

MAX_DETAIL_CHARS = 500
MAX_LIMIT = 10_000


@dataclass(frozen=True)
class AuditEntry:
    """One recorded action (``time`` is UTC ISO 8601, seconds)."""

    id: int
    time: str
    actor: str
    action: str
    target_kind: str
    target_id: str
    detail: str = ""


def record(
    workspace: Workspace,
    actor: str,
    action: str,
    target_kind: str,
    target_id: str,
    detail: str = "",
) -> None:
    """Append one entry, e.g. ``record(ws, "ann", "stop", "run", "r-1")``."""
    with workspace.transaction() as conn:
        conn.execute(
            "INSERT INTO audit (time, actor, action, target_kind, target_id, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (utc_now(), actor, action, target_kind, target_id, detail[:MAX_DETAIL_CHARS]),
        )


def entries(
    workspace: Workspace, *, target_id: str | None = None, limit: int = 200
) -> list[AuditEntry]:
    """The newest ``limit`` entries, newest first; only ``target_id``'s when given."""
    limit = max(1, min(int(limit), MAX_LIMIT))
    sql = "SELECT id, time, actor, action, target_kind, target_id, detail FROM audit"
    params: tuple[object, ...] = ()
    if target_id is not None:
        sql += " WHERE target_id = ?"
        params = (target_id,)
    rows = workspace.read().execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
    return [AuditEntry(**dict(row)) for row in rows]
