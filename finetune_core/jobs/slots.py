"""How many runs may train at once on each kind of device: a workspace setting an
admin changes (Training page, ``worker --cpu-slots``), read by every scheduler."""

from __future__ import annotations

from dataclasses import dataclass

from finetune_core.store import StoreError, Workspace

MAX_SLOTS = 64
_KEYS = {"cpu": "slots.cpu", "gpu": "slots.gpu"}


@dataclass(frozen=True)
class Slots:
    """Runs at once: on the CPU (all of this host's CPU runs together), and per GPU."""

    cpu: int = 1
    gpu: int = 1


def read_slots(workspace: Workspace) -> Slots:
    """The workspace's slots (defaults: one CPU run, one run per GPU)."""
    rows = workspace.read().execute(
        "SELECT key, value FROM settings WHERE key IN (?, ?)", tuple(_KEYS.values())
    )
    stored = {row["key"]: row["value"] for row in rows}
    values = {}
    for kind, key in _KEYS.items():
        try:
            values[kind] = max(1, min(MAX_SLOTS, int(stored.get(key, 1))))
        except ValueError:
            values[kind] = 1
    return Slots(**values)


def write_slots(workspace: Workspace, *, cpu: int | None = None, gpu: int | None = None) -> Slots:
    """Change the slots (admins only: the caller checks); returns the new setting."""
    for kind, value in (("cpu", cpu), ("gpu", gpu)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SLOTS:
            raise StoreError(f"{kind} slots must be a whole number from 1 to {MAX_SLOTS}.")
        with workspace.transaction() as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (_KEYS[kind], str(value)),
            )
    return read_slots(workspace)
