"""`python -m finetune_core train` end to end in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_core.data import make_demo_folder


def run_cli(*args: str, workspace: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FINETUNE_WORKSPACE": str(workspace)}
    return subprocess.run(
        [sys.executable, "-m", "finetune_core", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_train_from_a_folder_writes_metrics(tmp_path: Path) -> None:
    folder = make_demo_folder(tmp_path / "shapes", classes=3, per_class=12, size=40)
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        "--data",
        str(folder),
        "--model",
        "resnet18",
        "--weights",
        "none",
        "--strategy",
        "probe",
        "--epochs",
        "4",
        "--image-size",
        "32",
        "--batch-size",
        "16",
        "--lr",
        "0.02",
        "--seed",
        "3",
        "--set",
        "channels_last=false",
        "--out",
        str(out),
        workspace=tmp_path / "ws",
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"val_accuracy", "best_epoch", "epochs_run", "train_seconds"} <= metrics.keys()
    assert metrics["epochs_run"] == 4 and metrics["status"] == "SUCCEEDED"
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 3 and config["channels_last"] is False
    assert (out / "checkpoints" / "best.pt").exists()
    assert "SUCCEEDED: best epoch" in proc.stdout
    assert "epoch 4/4" in proc.stderr  # the progress line


@pytest.mark.slow
def test_bad_arguments_exit_non_zero_with_a_message(tmp_path: Path) -> None:
    folder = make_demo_folder(tmp_path / "shapes", classes=3, per_class=6, size=32)
    proc = run_cli(
        "train",
        "--data",
        str(folder),
        "--strategy",
        "probe",
        "--epochs",
        "0",
        "--out",
        str(tmp_path / "run"),
        workspace=tmp_path / "ws",
    )
    assert proc.returncode == 2
    assert "epochs must be between 1 and 10000" in proc.stderr
    proc = run_cli(
        "train",
        "--data",
        "no-such-dataset",
        "--out",
        str(tmp_path / "run2"),
        workspace=tmp_path / "ws",
    )
    assert proc.returncode == 2
    assert "no-such-dataset" in proc.stderr and "Traceback" not in proc.stderr


def test_offline_imagenet_weights_fail_with_a_clear_message(tmp_path: Path) -> None:
    folder = make_demo_folder(tmp_path / "shapes", classes=2, per_class=6, size=32)
    env_home = tmp_path / "torch-home"
    env = {
        **os.environ,
        "FINETUNE_WORKSPACE": str(tmp_path / "ws"),
        "TORCH_HOME": str(env_home),
        # point the download at a closed local port: the offline case, without waiting
        "FINETUNE_WEIGHTS_MIRROR": "http://127.0.0.1:9/",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune_core",
            "train",
            "--data",
            str(folder),
            "--model",
            "resnet18",
            "--weights",
            "imagenet",
            "--strategy",
            "probe",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "resnet18-" in proc.stderr and str(env_home) in proc.stderr
    assert "Traceback" not in proc.stderr
