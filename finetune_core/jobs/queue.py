"""The run queue in the workspace database: queue, claim with a lease, heartbeat, release.

Every dashboard server, ``worker`` and CLI process on a workspace goes through these
functions, so a run is claimed by exactly one of them (the claim is one ``BEGIN
IMMEDIATE`` transaction) and nobody touches a run whose lease is alive. A lease is a
random token plus an expiry (``time.time()`` seconds); the run's own process renews it
while it lives. This module owns the runs table's queue columns (see RunRecord).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from finetune_core.jobs import procs
from finetune_core.store import (
    CLI_CREATOR_PREFIX,
    RunRecord,
    RunStatus,
    StoreError,
    Workspace,
    utc_now,
)

LEASE_ENV = "FINETUNE_LEASE_SECONDS"
# A lease not renewed for this long belongs to a process that is gone (a run process
# renews it every few seconds; an admin may lengthen it for a slow shared disk).
LEASE_SECONDS = max(1.0, float(os.environ.get(LEASE_ENV, "") or 20.0))
HEARTBEAT_SECONDS = min(2.0, LEASE_SECONDS / 4)  # renewals, and how soon a stop is seen
HOST = socket.gethostname()


def new_token() -> str:
    """A lease owner token: which claim of which host holds a run."""
    return f"{HOST}:{secrets.token_hex(8)}"


def enqueue(workspace: Workspace, run_id: str, *, resume: bool = False) -> None:
    """Put a recorded run (new, or resumable) at the end of the queue."""
    with workspace.transaction() as conn:
        cur = conn.execute(
            "UPDATE runs SET status=?, queued_at=?, resume=?, stop_requested=0, error='', "
            "finished_at=NULL, lease_owner='', lease_until=NULL, pid=NULL, pid_started='', "
            "phase='' WHERE id=?",
            (RunStatus.QUEUED, time.time(), int(resume), run_id),
        )
        if cur.rowcount == 0:
            raise StoreError(f"No run with id {run_id!r}.")


def queued(workspace: Workspace) -> list[RunRecord]:
    """Queued runs, first in line first."""
    rows = workspace.read().execute(
        "SELECT id FROM runs WHERE status=? ORDER BY queued_at, rowid", (RunStatus.QUEUED,)
    )
    return [r for r in (workspace.get_run(row["id"]) for row in rows) if r is not None]


def held(workspace: Workspace) -> list[RunRecord]:
    """Runs whose process holds a lease (training, or evaluating after training)."""
    rows = workspace.read().execute(
        "SELECT id FROM runs WHERE lease_owner != '' ORDER BY started_at, rowid"
    )
    return [r for r in (workspace.get_run(row["id"]) for row in rows) if r is not None]


@dataclass(frozen=True)
class Slot:
    """One place a run can train: a device name ("cpu", "cuda:0") and how many runs
    may use it at once."""

    device: str
    capacity: int


def wants(record: RunRecord, slot: Slot, gpus: int) -> bool:
    """Whether ``record`` may train on ``slot``: CPU runs on the CPU, GPU runs on a GPU,
    "auto" on a GPU when this host has one, else on the CPU."""
    device = str((record.config or {}).get("device", "auto"))
    on_gpu = slot.device.startswith("cuda")
    if device == "cpu":
        return not on_gpu
    if device.startswith("cuda:"):
        return slot.device == device
    if device in ("cuda", "auto"):
        return on_gpu if (gpus > 0 or device == "cuda") else not on_gpu
    return not on_gpu  # mps and anything else: the host's own default device


def waits_for(record: RunRecord, gpus: int) -> str:
    """The device a queued run waits for: "cpu", "gpu" (any GPU) or one named GPU."""
    device = str((record.config or {}).get("device", "auto"))
    if device.startswith("cuda:"):
        return device
    if device == "cuda" or (device == "auto" and gpus > 0):
        return "gpu"
    return "cpu"


def claim(
    workspace: Workspace, token: str, slots: Sequence[Slot], *, gpus: int = 0
) -> tuple[RunRecord, Slot] | None:
    """Atomically take the first queued run that fits a free slot of this host.

    The run becomes RUNNING with ``token``'s lease, so no other scheduler can take it.
    Slots are shared by every scheduler of this host: the count of held leases decides.
    """
    waiting = (
        workspace.read()
        .execute("SELECT 1 FROM runs WHERE status=? LIMIT 1", (RunStatus.QUEUED,))
        .fetchone()
    )
    if waiting is None:  # the usual tick: no write lock taken for an empty queue
        return None
    now = time.time()
    with workspace.transaction() as conn:
        busy: dict[str, int] = {}
        for row in conn.execute(
            "SELECT device FROM runs WHERE lease_owner != '' AND host=?", (HOST,)
        ):
            busy[row["device"]] = busy.get(row["device"], 0) + 1
        free = [s for s in slots if busy.get(s.device, 0) < s.capacity]
        if not free:
            return None
        for row in conn.execute(
            "SELECT * FROM runs WHERE status=? ORDER BY queued_at, rowid", (RunStatus.QUEUED,)
        ):
            record = RunRecord(id=row["id"], config=_json(row["config"]), status=row["status"])
            slot = next((s for s in free if wants(record, s, gpus)), None)
            if slot is None:
                continue
            conn.execute(
                "UPDATE runs SET status=?, lease_owner=?, lease_until=?, host=?, device=?, "
                "started_at=?, error='', traceback='', phase='starting', pid=NULL, "
                "pid_started='' WHERE id=?",
                (
                    RunStatus.RUNNING,
                    token,
                    now + LEASE_SECONDS,
                    HOST,
                    slot.device,
                    utc_now(),
                    row["id"],
                ),  # fmt: skip
            )
            claimed = workspace.get_run(row["id"])
            assert claimed is not None
            return claimed, slot
    return None


def _json(text: str) -> dict:
    value = json.loads(text or "{}")
    return value if isinstance(value, dict) else {}


def attach(workspace: Workspace, run_id: str, token: str, pid: int, pid_started: str) -> bool:
    """Record the process that trains the run (its pid and start time, a pid-reuse guard)."""
    with workspace.transaction() as conn:
        cur = conn.execute(
            "UPDATE runs SET pid=?, pid_started=?, lease_until=? WHERE id=? AND lease_owner=?",
            (pid, pid_started, time.time() + LEASE_SECONDS, run_id, token),
        )
        return cur.rowcount == 1


def heartbeat(workspace: Workspace, run_id: str, token: str) -> tuple[bool, bool]:
    """Renew the lease: (still ours, stop requested). Not ours: the run was deleted or
    another process took it over, and this process must stop."""
    with workspace.transaction() as conn:
        cur = conn.execute(
            "UPDATE runs SET lease_until=? WHERE id=? AND lease_owner=?",
            (time.time() + LEASE_SECONDS, run_id, token),
        )
        if cur.rowcount != 1:
            return False, True
        row = conn.execute("SELECT stop_requested FROM runs WHERE id=?", (run_id,)).fetchone()
    return True, bool(row["stop_requested"])


def set_phase(workspace: Workspace, run_id: str, token: str, phase: str) -> None:
    with workspace.transaction() as conn:
        conn.execute("UPDATE runs SET phase=? WHERE id=? AND lease_owner=?", (phase, run_id, token))


def release(workspace: Workspace, run_id: str, token: str, **changes: object) -> bool:
    """End the lease (and apply ``changes``, e.g. the final status) if ``token`` holds it."""
    changes = {"lease_owner": "", "lease_until": None, "phase": "", **changes}
    assignments = ", ".join(f"{k}=?" for k in changes)
    with workspace.transaction() as conn:
        cur = conn.execute(
            f"UPDATE runs SET {assignments} WHERE id=? AND lease_owner=?",
            [*changes.values(), run_id, token],
        )
        return cur.rowcount == 1


def request_stop(workspace: Workspace, run_id: str) -> bool:
    """Queued: leaves the queue (STOPPED). Training: its process stops after the batch.
    False when the run is neither."""
    with workspace.transaction() as conn:
        cur = conn.execute(
            "UPDATE runs SET status=?, error=?, finished_at=? WHERE id=? AND status=?",
            (
                RunStatus.STOPPED,
                "Removed from the queue before it started.",
                utc_now(),
                run_id,
                RunStatus.QUEUED,
            ),  # fmt: skip
        )
        if cur.rowcount == 1:
            return True
        cur = conn.execute(
            "UPDATE runs SET stop_requested=1 WHERE id=? AND status=? AND lease_owner != ''",
            (run_id, RunStatus.RUNNING),
        )
        return cur.rowcount == 1


def expired(workspace: Workspace, *, now: float | None = None) -> list[RunRecord]:
    """Runs whose lease ran out: their process stopped renewing it."""
    now = time.time() if now is None else now
    rows = workspace.read().execute(
        "SELECT id FROM runs WHERE lease_owner != '' AND lease_until < ?", (now,)
    )
    return [r for r in (workspace.get_run(row["id"]) for row in rows) if r is not None]


def interrupt_unleased(workspace: Workspace) -> list[str]:
    """RUNNING rows without a lease whose process is gone become INTERRUPTED: a CLI
    ``train`` run records its process (host, pid) instead of a lease; a row with neither
    was left by a version without leases (every run a scheduler trains holds one)."""
    rows = (
        workspace.read()
        .execute(
            "SELECT id, creator, host, pid, pid_started FROM runs WHERE status=? AND lease_owner=''",
            (RunStatus.RUNNING,),
        )
        .fetchall()
    )
    gone = []
    for row in rows:
        if row["creator"].startswith(CLI_CREATOR_PREFIX):
            if not row["pid"] or row["host"] != HOST or procs.alive(row["pid"], row["pid_started"]):
                continue  # an old CLI row, another machine's, or still training
            gone.append((row["id"], "The train command's process ended without a result; "
                         "train again with --resume to continue from its last checkpoint."))  # fmt: skip
        else:
            gone.append((row["id"],
                         "The server that trained this run stopped; resume it to continue."))  # fmt: skip
    if not gone:  # every tick asks; a write lock only when there is something to change
        return []
    with workspace.transaction() as conn:
        for run_id, message in gone:
            conn.execute(
                "UPDATE runs SET status=?, error=? WHERE id=? AND status=? AND lease_owner=''",
                (RunStatus.INTERRUPTED, message, run_id, RunStatus.RUNNING),
            )
    return [run_id for run_id, _ in gone]


def positions(workspace: Workspace) -> dict[str, int]:
    """Queued run ids and their 1-based place in the workspace's queue."""
    return {record.id: i + 1 for i, record in enumerate(queued(workspace))}
