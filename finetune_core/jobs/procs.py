"""Processes on this machine, read from Linux's /proc: children, start times, liveness.

A pid alone can be reused by an unrelated process once its owner has died; a pid plus
its start time (clock ticks since boot, /proc/PID/stat field 22) names one process.
"""

from __future__ import annotations

import os
import signal


def start_time(pid: int) -> str | None:
    """The process's start time as /proc shows it, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()[19].decode()


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] == b"Z"


def alive(pid: int | None, started: str = "") -> bool:
    """Whether the process ``pid`` (started at ``started``, when given) still runs."""
    if not pid or pid <= 0:
        return False
    if os.path.isdir("/proc"):
        now = start_time(pid)
        return now is not None and (not started or now == started) and not is_zombie(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere)."""
    if not os.path.isdir("/proc"):
        return []
    tree, out, todo = children_by_parent(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def describe_exit(code: int | None) -> str:
    """'killed by signal SIGKILL (9)' or 'exited with code 3'."""
    if code is None:
        return "ended"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by signal {name} ({-code})"
    return f"exited with code {code}"
