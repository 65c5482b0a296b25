"""Issue 15 item 11, the CLI, queue and layout parts.

- The CLI prints one-line reasons, never a traceback, for a config file that is missing,
  a folder, not UTF-8, endless (/dev/zero) or absent on --resume (Infinity, nan and huge
  seeds: tests/robustness/test_bad_input.py, plus the flags here).
- ``train --out`` at a dashboard run's folder refused (v1 overwrote its finished model);
  the class: no folder the workspace or the job manager owns.
- The queue's bounds: FINETUNE_MAX_QUEUED and FINETUNE_MAX_QUEUED_PER_USER (v1 queued 50
  runs in 61 s), with look-alike names sharing one quota.
- Class folders named train/val inside train/ say which layout was found (v1: "none of
  the 0 image file(s) could be read ()").
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_core import runs
from finetune_core.cli import main as cli
from finetune_core.cli.train import out_folder_problem, run_train
from finetune_core.config import RunConfig
from finetune_core.data import IngestError, create_demo_dataset, ingest
from finetune_core.jobs import launcher, quota
from finetune_core.jobs.manager import JobError, JobManager
from finetune_core.jobs.quota import QuotaError, check_quota
from finetune_core.runs import RunPaths
from finetune_core.store import RunRecord, RunStatus, Workspace, new_id
from tests.helpers.data_files import assert_nothing_registered, write_image

ROOT = Path(__file__).resolve().parents[2]


def run_cli(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "finetune_core", "--workspace", str(workspace), *args],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip


# ------------------------------------------------------------------- (a) CLI reasons
def test_unreadable_config_files_give_one_line_reasons_in_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')
    cases = [
        (["--config", str(tmp_path / "missing.json")], "it does not exist; check the path"),
        (["--config", str(tmp_path)], "it is not a regular file"),
        (["--config", str(tmp_path / "latin1.json")], "is not UTF-8 text (byte 13)"),
        (["--config", "/dev/zero"], "it is not a regular file"),
        (["--resume"], "--resume continues a folder a run wrote"),
        (["--lr", "Infinity"], "lr must be a finite number (got inf)"),
        (["--seed", "9" * 40], "seed must be between 0 and 2147483647"),
    ]
    for args, reason in cases:
        proc = run_cli(tmp_path / "ws", "train", "--data", "d", "--out", str(tmp_path / "o"), *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert reason in proc.stderr.strip().splitlines()[-1], (args, proc.stderr)
        assert proc.stderr.startswith("error: ")
    assert not (tmp_path / "o").exists()


def test_a_huge_config_file_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with big.open("wb") as handle:  # sparse: 8 GiB that take no disk
        handle.truncate(8 * 1024**3)
    rc = cli.main(["--workspace", str(tmp_path / "ws"), "train", "--data", "d",
                   "--config", str(big), "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 2


def test_data_ingest_refuses_a_seed_out_of_the_runs_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    for i, rel in enumerate(["a/0.png", "a/1.png", "b/0.png", "b/1.png"]):
        write_image(folder / rel, seed=i, fmt="PNG")
    for seed, reason in (("9" * 30, "must be between 0 and 2147483647"), ("-5", "must be between 0 and 2147483647 (got -5)"),
                         ("x", "must be a whole number (got 'x')")):  # fmt: skip
        with pytest.raises(SystemExit) as caught:
            cli.main(["--workspace", str(tmp_path / "ws"), "data", "ingest", str(folder),
                      "--name", "p", "--seed", seed])  # fmt: skip
        assert caught.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"argument --seed: {reason}" in err, err
    assert not Workspace(tmp_path / "ws").list_datasets()


# ------------------------------------------------------------ (b) train --out refusal
def _finished_dashboard_run(ws: Workspace, dataset_id: str) -> tuple[RunRecord, Path]:
    record = ws.add_run(
        RunRecord(id=new_id("r"), name="pets r18", dataset_id=dataset_id, creator="ann",
                  status=RunStatus.SUCCEEDED, model="resnet18", strategy="probe")
    )  # fmt: skip
    folder = ws.run_dir(record.id)
    runs.save_config(RunPaths(folder), RunConfig(dataset=dataset_id))
    model = RunPaths(folder).checkpoint("best")
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"the finished model")
    return record, model


def test_train_out_at_a_dashboard_runs_folder_is_refused_and_its_model_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = Workspace(tmp_path / "ws")
    dataset = create_demo_dataset(ws, per_class=4, size=32, classes=2)
    record, model = _finished_dashboard_run(ws, dataset.id)
    before = {p: p.stat().st_mtime_ns for p in ws.run_dir(record.id).rglob("*")}
    for out in (ws.run_dir(record.id), ws.run_dir(record.id) / "checkpoints"):
        # v1 trained here (Trainer.fit, which this fast test refuses) and replaced the model
        rc = cli.main(["--workspace", str(ws.root), "train", "--data", dataset.id,
                       "--epochs", "1", "--out", str(out), "--quiet"])  # fmt: skip
        assert rc == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        assert f"dashboard run {record.id} ('pets r18', SUCCEEDED)" in err
        assert f"`runs resume {record.id}`" in err
    assert model.read_bytes() == b"the finished model"
    assert {p: p.stat().st_mtime_ns for p in ws.run_dir(record.id).rglob("*")} == before
    assert ws.get_run(record.id).status == RunStatus.SUCCEEDED
    assert [r.id for r in ws.list_runs()] == [record.id]  # no CLI row either


def test_no_folder_the_workspace_owns_is_a_train_out(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    record, _ = _finished_dashboard_run(ws, "d")
    queued = ws.add_run(RunRecord(id=new_id("r"), creator="bob", status=RunStatus.QUEUED))
    refused = {
        ws.root: "the workspace's own folder",
        ws.runs_dir: "the workspace's own folder",
        ws.datasets_dir: "inside the workspace's datasets folder",
        ws.datasets_dir / "ds-1" / "images": "inside the workspace's datasets folder",
        ws.cache_dir / "x": "inside the workspace's cache folder",
        ws.tmp_dir: "inside the workspace's temporary files folder",
        ws.run_dir(record.id): f"dashboard run {record.id}",
        ws.run_dir(record.id) / "export" / "onnx": f"dashboard run {record.id}",
        ws.run_dir(queued.id): f"dashboard run {queued.id}",
        ws.root / "runs" / ".." / "runs" / record.id: f"dashboard run {record.id}",
    }
    for out, reason in refused.items():
        problem = out_folder_problem(ws, out)
        assert problem is not None and reason in problem, (out, problem)
    link = tmp_path / "link"
    link.symlink_to(ws.run_dir(record.id))
    assert f"dashboard run {record.id}" in (out_folder_problem(ws, link) or "")
    # allowed: new folders (in runs/ too, as docs/distributed.md shows) and a CLI run's own
    cli_folder = tmp_path / "mine"
    ws.add_run(RunRecord(id=new_id("r"), creator="cli:me", folder=str(cli_folder.resolve()),
                         status=RunStatus.SUCCEEDED))  # fmt: skip
    for out in (tmp_path / "new", ws.runs_dir / "pets-r50", cli_folder, cli_folder / "sub"):
        assert out_folder_problem(ws, out) is None, out


def test_the_job_managers_own_torchrun_launch_is_not_refused(tmp_path: Path) -> None:
    # The manager starts a multi-device run as `train --out runs/<id>` under torchrun (its
    # ranks see RANK and WORLD_SIZE): the guard is skipped there, and only there.
    cmd = launcher.torchrun_command(tmp_path / "ws" / "runs" / "r-1", nproc=2)
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "ws" / "runs" / "r-1")
    source = inspect.getsource(run_train)
    assert "if not ddp.under_torchrun():" in source
    assert source.index("out_folder_problem(") > source.index("if not ddp.under_torchrun():")


# -------------------------------------------------------------------- (c) queue quota
def _queue(ws: Workspace, creator: str, n: int, status: str = RunStatus.QUEUED) -> None:
    for _ in range(n):
        ws.add_run(RunRecord(id=new_id("r"), creator=creator, status=status))


def test_fifty_quick_submits_stop_at_the_per_user_and_workspace_limits(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(quota.MAX_QUEUED_ENV, raising=False)
    monkeypatch.delenv(quota.MAX_QUEUED_PER_USER_ENV, raising=False)
    accepted, refusals = 0, []
    for _ in range(50):  # v1: all 50 queued in 61 s
        try:
            check_quota(workspace, "mallory")
        except QuotaError as exc:
            refusals.append(str(exc))
            continue
        accepted += 1
        _queue(workspace, "mallory", 1)
    assert accepted == quota.DEFAULT_MAX_QUEUED_PER_USER == 5
    assert len(refusals) == 45
    assert refusals[0] == (
        "You have 5 runs waiting in the queue, the most one user may have queued at once is 5 "
        "(FINETUNE_MAX_QUEUED_PER_USER). Wait for one to start, or cancel a queued run you "
        "no longer need on the Training page."
    )
    for user in ("a", "b"):
        _queue(workspace, user, 5)
    check_quota(workspace, "c")  # 15 queued
    _queue(workspace, "c", 5)
    with pytest.raises(QuotaError, match=r"The queue is full: 20 runs are waiting, the limit "
                       r"for this workspace is 20 \(FINETUNE_MAX_QUEUED\)"):  # fmt: skip
        check_quota(workspace, "e")


def test_quota_rules(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(quota.MAX_QUEUED_ENV, "6")
    monkeypatch.setenv(quota.MAX_QUEUED_PER_USER_ENV, "2")
    # only QUEUED rows count: running, finished, failed runs do not
    for status in (RunStatus.RUNNING, RunStatus.SUCCEEDED, RunStatus.FAILED):
        _queue(workspace, "Ann", 3, status)
    check_quota(workspace, "Ann")
    # look-alike names are one person: case, blanks, full-width letters
    _queue(workspace, "  ANN ", 1)
    _queue(workspace, "\uff41\uff4e\uff4e", 1)  # "ａｎｎ"
    for name in ("ann", "Ann", " ANN", "\uff21\uff2e\uff2e"):
        with pytest.raises(QuotaError, match="You have 2 runs waiting"):
            check_quota(workspace, name)
    check_quota(workspace, "bob")  # others are not held up by Ann
    # runs with no creator (no accounts) count only against the workspace's bound
    _queue(workspace, "", 3)
    check_quota(workspace, "")  # 5 queued, 3 of them by nobody: under 6
    monkeypatch.setenv(quota.MAX_QUEUED_ENV, "5")
    with pytest.raises(QuotaError, match="The queue is full: 5 runs"):
        check_quota(workspace, "")
    monkeypatch.setenv(quota.MAX_QUEUED_ENV, "0")  # 0: no bound
    check_quota(workspace, "")
    monkeypatch.setenv(quota.MAX_QUEUED_PER_USER_ENV, "0")
    check_quota(workspace, "ann")
    for bad in ("-1", "five", "2.5"):
        monkeypatch.setenv(quota.MAX_QUEUED_PER_USER_ENV, bad)
        with pytest.raises(QuotaError, match="FINETUNE_MAX_QUEUED_PER_USER must be a whole"):
            check_quota(workspace, "bob")


def test_quota_counts_inside_the_submit_transaction(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(quota.MAX_QUEUED_PER_USER_ENV, "1")
    _queue(workspace, "ann", 1)
    with workspace.transaction() as conn, pytest.raises(QuotaError):
        check_quota(workspace, "ann", conn=conn)


def test_submit_refuses_over_the_quota(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "check_quota" not in inspect.getsource(JobManager.submit):
        pytest.skip(
            "JobManager.submit does not call jobs.quota.check_quota yet (the lead wires it)"
        )
    monkeypatch.setenv(quota.MAX_QUEUED_PER_USER_ENV, "2")
    dataset = create_demo_dataset(workspace, per_class=4, size=32, classes=2)
    manager = JobManager(workspace, start=False)
    config = RunConfig(dataset=dataset.id, epochs=1, image_size=32)
    ids = [manager.submit(config, creator="ann") for _ in range(2)]
    with pytest.raises((JobError, QuotaError), match="You have 2 runs waiting"):
        manager.submit(config, creator=" ANN")
    assert [r.id for r in workspace.list_runs() if r.status == RunStatus.QUEUED] == ids[::-1]


# ------------------------------------------------------------- (d) the layout found
@pytest.mark.parametrize(
    ("tree", "found"),
    [
        (["train/train/0.png", "train/train/1.png", "train/val/0.png"],
         "Found train/train/ (2 images directly inside), train/val/ (1 image directly inside)"),
        (["data/train/train/0.png", "data/train/val/0.png"],
         "Found data/train/train/ (1 image directly inside), data/train/val/ (1 image"),
        (["train/0.png", "val/0.png", "test/0.png"],
         "Found test/ (1 image directly inside), train/ (1 image directly inside), val/"),
    ],
)  # fmt: skip
def test_images_outside_class_folders_say_which_layout_was_found(
    workspace: Workspace, tmp_path: Path, tree: list[str], found: str
) -> None:
    for i, rel in enumerate(tree):
        write_image(tmp_path / "upload" / rel, seed=i, fmt="PNG")
    with pytest.raises(IngestError) as caught:
        ingest(workspace, tmp_path / "upload", name="layout")
    message = str(caught.value)
    assert message.startswith("No image is in a class folder. " + found), message
    assert "read as splits" in message and "0 image file(s)" not in message
    assert_nothing_registered(workspace)


def test_class_folders_named_like_splits_work_inside_split_folders(
    workspace: Workspace, tmp_path: Path
) -> None:
    # The way out the message gives: train/ and val/ each holding classes train and val.
    for i, rel in enumerate(f"{s}/{c}/{j}.png" for s in ("train", "val")
                            for c in ("train", "val") for j in range(3)):  # fmt: skip
        write_image(tmp_path / "upload" / rel, seed=i, fmt="PNG")
    dataset = ingest(workspace, tmp_path / "upload", name="splits").dataset
    assert dataset.class_names == ["train", "val"]
