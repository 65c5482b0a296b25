"""run.json records what the numbers depend on (issue 13 item 6): the threads actually
used, versions, git commit, CPU/GPU; and the recorded command uses the run's own weights."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import numpy as np
import PIL
import pytest
import torch
import torchvision

import finetune_core
from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.jobs.records import cli_command, write_run_info
from finetune_core.runs import RunPaths, read_info
from finetune_core.store import Workspace
from finetune_core.training import setup
from finetune_core.training.trainer import Trainer

SOURCE_TREE = Path(finetune_core.__file__).resolve().parent.parent


def set_up(ws: Workspace, dataset: object, run_dir: Path, **changes: object) -> Trainer:
    """A trainer whose model is set up (seeds, threads, device, weights), not trained."""
    fields: dict = dict(model="mobilenet_v3_small", weights="none", strategy="probe",
                        epochs=1, image_size=32)  # fmt: skip
    config = RunConfig(dataset=dataset.id, **{**fields, **changes})  # type: ignore[attr-defined]
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_info(run_dir, config, dataset, ws)
    trainer = Trainer(config, dataset, run_dir, ws.cache_dir)
    setup.build_model(trainer)
    return trainer


@pytest.fixture
def demo(workspace: Workspace) -> object:
    return create_demo_dataset(workspace, per_class=4, size=32, classes=2)


def test_environment_records_threads_versions_and_hardware(
    workspace: Workspace, demo: object, tmp_path: Path
) -> None:
    before = torch.get_num_threads()
    try:
        set_up(workspace, demo, tmp_path / "run", num_threads=0)  # 0 = every core
        env = read_info(RunPaths(tmp_path / "run"))["environment"]
        assert env["threads"] == torch.get_num_threads() >= 1  # the number used, never 0
        set_up(workspace, demo, tmp_path / "run1", num_threads=1)
        assert read_info(RunPaths(tmp_path / "run1"))["environment"]["threads"] == 1
    finally:
        torch.set_num_threads(before)
    assert env["finetune_dashboard"] == finetune_core.__version__ == "0.1.0"
    assert env["numpy"] == np.__version__ and env["pillow"] == PIL.__version__
    assert env["torch"] == torch.__version__ and env["torchvision"] == torchvision.__version__
    assert env["device"] == "cpu" and env["gpu"] is None and env["processes"] == 1
    assert env["cpu"] and env["cpu"] != "CPU"
    if (SOURCE_TREE / ".git").exists():
        head = subprocess.run(["git", "-C", str(SOURCE_TREE), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        assert env["git_commit"] == head and len(head) == 40
        assert isinstance(env["git_dirty"], bool)
    # the environment and the dataset facts sit side by side in run.json
    assert read_info(RunPaths(tmp_path / "run"))["dataset_fingerprint"] == demo.fingerprint  # type: ignore[attr-defined]


def test_git_state_of_a_folder_that_is_not_a_checkout_is_none(tmp_path: Path) -> None:
    assert setup.git_state(tmp_path) == (None, None)
    (tmp_path / ".git").mkdir()  # looks like a checkout, but git cannot read it
    assert setup.git_state(tmp_path) == (None, None)


def test_recorded_command_uses_the_runs_own_copy_of_the_weights(
    workspace: Workspace, demo: object, tmp_path: Path
) -> None:
    upload = tmp_path / "uploads" / "my weights.pt"
    upload.parent.mkdir()
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), upload)
    run_dir = tmp_path / "run"
    set_up(workspace, demo, run_dir, weights=str(upload))
    own = RunPaths(run_dir).initial_weights
    assert own.read_bytes() == upload.read_bytes()
    argv = shlex.split(read_info(RunPaths(run_dir))["cli"])
    weights = Path(argv[argv.index("--weights") + 1])
    assert weights == own.resolve() and weights.is_relative_to(run_dir.resolve())
    assert argv[argv.index("--workspace") + 1] == str(workspace.root)
    # the upload goes away: resuming (setting up again) still finds the weights
    upload.unlink()
    trainer = set_up(workspace, demo, run_dir, weights=str(upload))
    assert trainer.model is not None and own.is_file()
    # the setup page's command (no run yet) still shows what the user chose
    assert f"--weights '{upload}'" in cli_command(RunConfig(weights=str(upload)))
