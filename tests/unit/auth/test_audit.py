"""The audit log, and the guarded actions that write it."""

from __future__ import annotations

import pytest

from finetune_core.auth import audit
from finetune_core.auth.access import (
    PermissionDenied,
    User,
    guarded_delete_dataset,
    guarded_delete_run,
    guarded_evaluate,
    guarded_export,
    guarded_rename_dataset,
    guarded_rename_run,
    guarded_stop,
)
from finetune_core.runs import RunPaths
from finetune_core.store import DatasetRecord, RunRecord, RunStatus, Workspace

ANN = User("ann")
BOB = User("bob")
ROOT = User("root", is_admin=True)


class Manager:
    """The job manager's stop, as far as the guard sees it (the queue is tested elsewhere)."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def stop(self, run_id: str) -> bool:
        self.workspace.update_run(run_id, status=RunStatus.STOPPED)
        return True


def _log(workspace: Workspace, **kwargs) -> list[tuple[str, str, str, str, str]]:
    return [(e.actor, e.action, e.target_kind, e.target_id, e.detail)
            for e in audit.entries(workspace, **kwargs)]  # fmt: skip


def test_record_and_entries_newest_first(workspace: Workspace) -> None:
    audit.record(workspace, "ann", "submit", "run", "r-1")
    audit.record(workspace, "bob", "stop", "run", "r-2", "x" * 900)
    audit.record(workspace, "ann", "delete", "dataset", "d-1", "cats")
    assert [e.action for e in audit.entries(workspace)] == ["delete", "stop", "submit"]
    assert _log(workspace, target_id="r-1") == [("ann", "submit", "run", "r-1", "")]
    assert len(audit.entries(workspace, target_id="r-2")[0].detail) == audit.MAX_DETAIL_CHARS
    assert [e.action for e in audit.entries(workspace, limit=1)] == ["delete"]
    assert audit.entries(workspace)[0].time.endswith("+00:00")


def test_an_admin_stopping_someone_elses_run_is_recorded(workspace: Workspace) -> None:
    workspace.add_run(RunRecord(id="r-ann", creator="ann", status=RunStatus.RUNNING))
    assert guarded_stop(Manager(workspace), workspace, ROOT, "r-ann") is True
    assert workspace.get_run("r-ann").status == RunStatus.STOPPED
    assert _log(workspace) == [("root", "stop", "run", "r-ann", "")]


def test_a_non_owner_cannot_change_a_run_and_nothing_is_recorded(workspace: Workspace) -> None:
    workspace.add_run(RunRecord(id="r-ann", name="mine", creator="ann", status=RunStatus.RUNNING))
    workspace.add_dataset(DatasetRecord(id="d-ann", name="cats", creator="ann"))
    attempts = [
        lambda: guarded_stop(Manager(workspace), workspace, BOB, "r-ann"),
        lambda: guarded_rename_run(workspace, BOB, "r-ann", "bob's now"),
        lambda: guarded_delete_run(workspace, BOB, "r-ann"),
        lambda: guarded_rename_dataset(workspace, BOB, "d-ann", "dogs"),
        lambda: guarded_delete_dataset(workspace, BOB, "d-ann"),
    ]
    for attempt in attempts:
        with pytest.raises(PermissionDenied, match="Only ann or an admin"):
            attempt()
    run = workspace.get_run("r-ann")
    assert (run.status, run.name) == (RunStatus.RUNNING, "mine")
    assert workspace.get_dataset("d-ann").name == "cats"
    assert audit.entries(workspace) == []


def test_owner_actions_are_recorded(workspace: Workspace) -> None:
    workspace.add_run(RunRecord(id="r-ann", name="mine", creator="ann", status=RunStatus.SUCCEEDED))
    guarded_rename_run(workspace, ANN, "r-ann", " better ")
    guarded_delete_run(workspace, ANN, "r-ann")
    assert _log(workspace, target_id="r-ann") == [
        ("ann", "delete", "run", "r-ann", "better"),
        ("ann", "rename", "run", "r-ann", "mine -> better"),
    ]


def test_re_evaluate_and_export_over_an_existing_one_are_for_owner_or_admin(
    workspace: Workspace,
) -> None:
    workspace.add_run(RunRecord(id="r-ann", creator="ann", status=RunStatus.SUCCEEDED))
    paths = RunPaths(workspace.run_dir("r-ann"))
    calls: list[str] = []

    def evaluate() -> str:
        paths.evaluation.write_text("{}")
        calls.append("evaluate")
        return "done"

    def export() -> None:
        paths.export_zip("onnx").parent.mkdir(parents=True, exist_ok=True)
        paths.export_zip("onnx").write_bytes(b"zip")
        calls.append("export")

    # a first evaluation and a first export of a format: anyone signed in
    assert guarded_evaluate(workspace, BOB, "r-ann", evaluate) == "done"
    guarded_export(workspace, BOB, "r-ann", "onnx", export)
    # replacing them: only ann or an admin, and a refusal runs nothing
    with pytest.raises(PermissionDenied, match="Only ann or an admin can re-evaluate"):
        guarded_evaluate(workspace, BOB, "r-ann", evaluate)
    with pytest.raises(PermissionDenied, match="replace the onnx export"):
        guarded_export(workspace, BOB, "r-ann", "onnx", export)
    assert calls == ["evaluate", "export"]
    guarded_evaluate(workspace, ROOT, "r-ann", evaluate)
    guarded_export(workspace, ANN, "r-ann", "onnx", export)

    def broken() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        guarded_evaluate(workspace, ANN, "r-ann", broken)
    assert _log(workspace) == [
        ("ann", "re-evaluate", "run", "r-ann", "failed: RuntimeError"),
        ("ann", "export", "run", "r-ann", "onnx (replaced)"),
        ("root", "re-evaluate", "run", "r-ann", ""),
        ("bob", "export", "run", "r-ann", "onnx"),
        ("bob", "evaluate", "run", "r-ann", ""),
    ]
    with pytest.raises(PermissionDenied, match="Sign in"):
        guarded_export(workspace, User(""), "r-ann", "tflite", export)
