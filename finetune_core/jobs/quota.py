"""How many runs may wait in the queue: a bound for the workspace and one per user.

v1's queue had neither (a script queued 50 runs in 61 s). :func:`check_quota` counts
the QUEUED rows of the runs table and raises :class:`QuotaError`, with a message saying
what the limit is and what to do, when one more would go over a limit. The limits come
from the environment of the process that submits:

- ``FINETUNE_MAX_QUEUED``: runs queued in the workspace at once (default 20);
- ``FINETUNE_MAX_QUEUED_PER_USER``: runs one user has queued at once (default 5).

``0`` turns a limit off. Users are compared by their identity key (NFKC, blanks
collapsed, case folded), so "  ANN " and "ann" share one quota; runs with no creator
(a workspace without accounts) count only against the workspace's bound.
"""

from __future__ import annotations

import os
import sqlite3

from finetune_core.auth.access import identity_key
from finetune_core.store import RunStatus, Workspace

MAX_QUEUED_ENV = "FINETUNE_MAX_QUEUED"
MAX_QUEUED_PER_USER_ENV = "FINETUNE_MAX_QUEUED_PER_USER"
DEFAULT_MAX_QUEUED = 20
DEFAULT_MAX_QUEUED_PER_USER = 5


class QuotaError(Exception):
    """One more queued run would go over a limit (or a limit is set to something unreadable)."""


def limit_from_env(name: str, default: int) -> int:
    """A limit from the environment: a whole number >= 0 (0: no limit)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise QuotaError(
            f"{name} must be a whole number of runs, 0 for no limit (it is {text[:40]!r}). "
            "Ask the administrator to fix the server's setting."
        )
    return value


def check_quota(
    workspace: Workspace, creator: str, *, conn: sqlite3.Connection | None = None
) -> None:
    """Raise QuotaError if one more QUEUED run by ``creator`` would go over a limit.

    Pass ``conn`` (from ``workspace.transaction()``) to count inside the transaction that
    inserts the run, so two submits at the same moment cannot both take the last place.
    """
    total_limit = limit_from_env(MAX_QUEUED_ENV, DEFAULT_MAX_QUEUED)
    user_limit = limit_from_env(MAX_QUEUED_PER_USER_ENV, DEFAULT_MAX_QUEUED_PER_USER)
    if not total_limit and not user_limit:
        return
    db = conn if conn is not None else workspace.read()
    creators = [
        row[0] or ""
        for row in db.execute("SELECT creator FROM runs WHERE status=?", (RunStatus.QUEUED,))
    ]
    if total_limit and len(creators) >= total_limit:
        raise QuotaError(
            f"The queue is full: {len(creators)} runs are waiting, the limit for this "
            f"workspace is {total_limit} ({MAX_QUEUED_ENV}). Wait for some to start, or "
            "cancel queued runs you no longer need on the Training page."
        )
    key = identity_key(creator or "")
    if not (user_limit and key):
        return
    mine = sum(1 for c in creators if c and identity_key(c) == key)
    if mine >= user_limit:
        raise QuotaError(
            f"You have {mine} runs waiting in the queue, the most one user may have queued "
            f"at once is {user_limit} ({MAX_QUEUED_PER_USER_ENV}). Wait for one to start, "
            "or cancel a queued run you no longer need on the Training page."
        )
