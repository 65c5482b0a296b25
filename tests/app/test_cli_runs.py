"""A run trained with the CLI (a real ``python -m finetune_core train`` process, into a
folder outside the workspace) on the Runs, Evaluation and Predict pages (issue 13 item 14)."""

from __future__ import annotations

import getpass
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from finetune_core.data import make_demo_folder
from finetune_core.runs import RunFolder
from finetune_core.store import Workspace
from ui import services

pytestmark = pytest.mark.slow  # the fixture trains a model (in a CLI process)

APP = str(Path(__file__).resolve().parents[2] / "app.py")
ACCESS_VARIABLES = ("FINETUNE_ALLOW_SERVER_PATHS", "FINETUNE_ALLOW_CUSTOM_BACKBONE",
                    "FINETUNE_ALLOW_CUSTOM_BACKBONES", "FINETUNE_PASSWORD",
                    "FINETUNE_PASSWORD_SHA256", "FINETUNE_ADMINS")  # fmt: skip


@pytest.fixture(scope="module")
def cli_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """(workspace root, run id, run folder) of a tiny run the CLI trained outside it."""
    base = tmp_path_factory.mktemp("cli-app")
    photos = make_demo_folder(base / "photos", classes=2, per_class=10, size=32)
    root, out = base / "ws", base / "my-runs" / "cli-run"
    env = {k: v for k, v in os.environ.items() if k != "FINETUNE_WORKSPACE"}
    proc = subprocess.run(
        [sys.executable, "-m", "finetune_core", "--workspace", str(root), "train",
         "--data", str(photos), "--model", "resnet18", "--weights", "none",
         "--strategy", "probe", "--epochs", "2", "--image-size", "32", "--batch-size", "8",
         "--lr", "0.02", "--set", "channels_last=false", "--set", "mixed_precision=off",
         "--out", str(out), "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "finetune_core", "runs", "list", "--json", "--workspace", str(root)],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    [row] = json.loads(listed.stdout)
    assert Path(row["folder"]) == out.resolve()
    return root, row["id"], out.resolve()


@pytest.fixture
def app(
    cli_trained: tuple[Path, str, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Workspace, str, Path]]:
    root, run_id, folder = cli_trained
    monkeypatch.setenv("FINETUNE_WORKSPACE", str(root))
    for name in ACCESS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    st.cache_resource.clear()
    yield services.get_workspace(), run_id, folder
    st.cache_resource.clear()
    st.cache_data.clear()


def open_page(page: str, **query: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    for key, value in query.items():
        at.query_params[key] = value
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_runs_page_lists_the_cli_run_with_its_creator(app: tuple[Workspace, str, Path]) -> None:
    ws, run_id, folder = app
    at = open_page("runs", run=run_id)
    table = at.dataframe[0].value
    [row] = table.to_dict("records")
    summary = RunFolder(folder).summary()
    assert row["Name"] == "cli-run" and row["Creator"] == f"cli:{getpass.getuser()}"
    assert row["Val. acc."] == summary["val_accuracy"] and row["Status"].endswith("Succeeded")
    assert row["Open"] == f"evaluation?run={run_id}"  # it has a model: opens on Evaluation
    assert any("Trained from the command line" in c.value for c in at.caption)


def test_the_evaluation_page_evaluates_and_shows_the_cli_run(
    app: tuple[Workspace, str, Path],
) -> None:
    ws, run_id, folder = app
    at = open_page("evaluation", run=run_id)
    assert at.query_params["run"] == run_id
    assert any("no evaluation yet" in i.value for i in at.info)
    at.button(key="evaluate").click().run()
    assert not at.exception, [e.value for e in at.exception]
    evaluation = RunFolder(folder).evaluation()
    assert evaluation is not None, "evaluated into the CLI run's own folder"
    split = at.segmented_control(key=f"eval_split_{run_id}").value
    cards = {m.label: m.value for m in at.metric}
    assert cards["Accuracy"] == f"{evaluation['splits'][split]['accuracy'] * 100:.1f}%"


def test_the_predict_page_classifies_with_the_cli_run(app: tuple[Workspace, str, Path]) -> None:
    ws, run_id, folder = app
    at = open_page("predict", run=run_id)
    assert at.selectbox(key="predict_run").value == run_id
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buffer, "PNG")
    at.file_uploader(key="predict_images").set_value([("red.png", buffer.getvalue(), "image/png")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    [probs] = [df.value for df in at.dataframe if "Probability" in df.value.columns]
    assert abs(probs["Probability"].sum() - 1.0) < 1e-3
    assert set(probs["Class"]) <= set(RunFolder(folder).info["class_names"])
