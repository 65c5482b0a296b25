"""Every page of the app through Streamlit's AppTest, on real workspaces, real datasets and
tiny real training runs (resnet18, random weights, 32 px, CPU).

The job manager lives in ``st.cache_resource`` exactly as in the app; tests reach the same
instance through ``ui.services.get_job_manager`` and clear the caches afterwards, which
shuts the manager down.
"""

from __future__ import annotations

import io
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from finetune_core.auth import accounts
from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.jobs import launcher
from finetune_core.jobs.manager import JobManager
from finetune_core.jobs.postrun import DEFAULT_HOOKS
from finetune_core.jobs.slots import write_slots
from finetune_core.runs import RunFolder
from finetune_core.store import RunRecord, RunStatus, Workspace
from ui import services

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGES = {
    "home": ("views/home.py", "Finetune Dashboard"),
    "data": ("views/data.py", "Data"),
    "setup": ("views/setup.py", "Setup"),
    "training": ("views/training.py", "Training"),
    "evaluation": ("views/evaluation.py", "Evaluation"),
    "predict": ("views/predict.py", "Predict"),
    "runs": ("views/runs.py", "Runs"),
}


def quick(dataset_id: str, **changes: Any) -> RunConfig:
    base = dict(
        dataset=dataset_id, name="tiny", model="resnet18", weights="none", strategy="probe",
        epochs=2, image_size=32, batch_size=16, lr=1e-2, channels_last=False,
        mixed_precision="off",
    )  # fmt: skip
    base.update(changes)
    return RunConfig(**base)


def open_page(name: str, **query: str) -> AppTest:
    """A fresh browser session on ``name``, with ``query`` in the URL."""
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    for key, value in query.items():
        at.query_params[key] = value
    at.switch_page(PAGES[name][0])
    at.run()
    assert_ok(at)
    return at


def assert_ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def plain(markdown: str) -> str:
    """Markdown as read on screen: backslash escapes (see ui.components.esc) removed."""
    return re.sub(r"\\(.)", r"\1", markdown)


def texts(at: AppTest) -> str:
    """Everything a user reads on the page, as one string."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "success",
                 "warning", "error", "text", "code"):  # fmt: skip
        parts += [plain(str(e.value)) for e in getattr(at, kind)]
    return "\n".join(parts)


def png(color: tuple[int, int, int], size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, "PNG")
    return buffer.getvalue()


def wait_until(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


ACCESS_VARIABLES = (
    "FINETUNE_ALLOW_SERVER_PATHS", "FINETUNE_ALLOW_CUSTOM_BACKBONE",
    "FINETUNE_ALLOW_CUSTOM_BACKBONES", "FINETUNE_PASSWORD", "FINETUNE_PASSWORD_SHA256",
    "FINETUNE_ADMINS",
)  # fmt: skip


def use_workspace(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Point the app at ``root`` in open access mode (no settings leak in from the shell)."""
    monkeypatch.setenv("FINETUNE_WORKSPACE", str(root))
    for name in ACCESS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def app_ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    """An empty workspace the app uses; caches (and the job manager) cleared afterwards."""
    use_workspace(monkeypatch, tmp_path / "ws")
    st.cache_resource.clear()
    yield services.get_workspace()
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A workspace with the demo dataset and one finished, evaluated tiny run (built once)."""
    root = tmp_path_factory.mktemp("trained") / "ws"
    ws = Workspace(root)
    dataset = create_demo_dataset(ws, per_class=12, size=40, creator="alice")
    manager = JobManager(ws, post_run=list(DEFAULT_HOOKS))
    try:
        run_id = manager.submit(quick(dataset.id, epochs=3, name="first run"), creator="alice")
        assert manager.wait(run_id, timeout=180) == RunStatus.SUCCEEDED
    finally:
        manager.shutdown()
    assert (ws.run_dir(run_id) / "eval.json").exists()
    return root, dataset.id, run_id


@pytest.fixture
def trained(
    trained_root: tuple[Path, str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Workspace, str, str]]:
    root, dataset_id, run_id = trained_root
    use_workspace(monkeypatch, root)
    st.cache_resource.clear()
    yield services.get_workspace(), dataset_id, run_id
    st.cache_resource.clear()
    st.cache_data.clear()


# --------------------------------------------------------------------- empty workspace
EMPTY_MESSAGES = {
    "home": "No runs yet",
    "data": "No datasets yet",
    "setup": "There is no dataset to train on yet",
    "training": "No runs yet",
    "evaluation": "No trained model to evaluate yet",
    "predict": "No trained model yet",
    "runs": "No runs yet",
}


@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_renders_with_an_empty_workspace(app_ws: Workspace, name: str) -> None:
    at = open_page(name)
    assert at.title[0].value == PAGES[name][1]
    assert EMPTY_MESSAGES[name] in texts(at)


def test_home_shows_workspace_counts_and_device(app_ws: Workspace) -> None:
    create_demo_dataset(app_ws, per_class=6, size=32)
    at = open_page("home")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Datasets"] == "1" and metrics["Runs"] == "0"
    assert metrics["Training now"] == "0" and metrics["Queued"] == "0"
    assert metrics["Device"] in ("CPU", "GPU", "MPS")
    assert "Training runs on" in texts(at)


def sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    return at.button[0].click().run()


def test_password_mode_signs_in_and_limits_changes_to_the_creator(
    app_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    carol = accounts.bootstrap_admin(app_ws, "carol", "s3cret-pass")
    accounts.create_account(app_ws, carol.user(), "bob", "s3cret-pass")
    app_ws.add_run(RunRecord(id="r-20260101-000000-a11c", name="alice's run", creator="alice",
                             status=RunStatus.FAILED, error="boom"))  # fmt: skip
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert [t.value for t in at.title] == ["Finetune Dashboard"] and not at.metric
    sign_in(at, "bob", "wrong")
    assert any("Wrong name or password." in e.value for e in at.error)
    sign_in(at, "bob", "s3cret-pass")
    assert_ok(at)
    assert at.metric, "the home page shows after signing in"
    assert "Signed in as bob" in [t.value for t in at.sidebar.text]

    at.switch_page("views/runs.py").run()
    assert_ok(at)
    assert at.button(key="runs_delete").disabled and at.button(key="runs_rename").disabled
    assert "Only alice or an admin can change this run." in at.button(key="runs_rename").help
    assert at.button(key="runs_rerun").disabled is False  # anyone signed in may start runs

    admin = AppTest.from_file(APP, default_timeout=60).run()
    sign_in(admin, "Carol", "s3cret-pass")
    admin.switch_page("views/runs.py").run()
    admin.checkbox(key="runs_delete_confirm_r-20260101-000000-a11c").check().run()
    admin.button(key="runs_delete").click().run()
    assert_ok(admin)
    assert app_ws.get_run("r-20260101-000000-a11c") is None


# --------------------------------------------------------------------- home -> setup
def test_demo_button_creates_the_dataset_and_opens_setup_with_its_settings(
    app_ws: Workspace,
) -> None:
    at = open_page("home")
    next(b for b in at.button if b.label == "Set up a run on the demo data").click().run()
    assert_ok(at)
    assert at.title[0].value == "Setup"
    [record] = app_ws.list_datasets()
    assert record.source_kind == "demo" and record.num_classes == 3
    # The demo's own settings (presets.demo_config): a probe on cached ImageNet weights,
    # else a small network from scratch, never weights that cannot load here.
    cached = services.imagenet_cached("resnet18")
    assert at.session_state["cfg_strategy"] == ("probe" if cached else "full")
    assert at.session_state["cfg_weights_source"] == ("imagenet" if cached else "none")
    assert at.selectbox(key="setup_dataset").value == record.id


# --------------------------------------------------------------------- data page
def test_data_page_imports_class_by_class_and_shows_the_health_report(app_ws: Workspace) -> None:
    at = open_page("data")
    at.text_input(key="import_name").input("colours")
    at.text_input(key="class_name_0").input("red")
    at.file_uploader(key="class_files_0").set_value(
        [(f"r{i}.png", png((200 + i, 0, 0)), "image/png") for i in range(6)]
    )
    at.text_input(key="class_name_1").input("blue")
    at.file_uploader(key="class_files_1").set_value(
        [(f"b{i}.png", png((0, 0, 200 + i)), "image/png") for i in range(6)]
        + [("broken.png", b"not an image", "image/png")]
    )
    at.run()
    at.button(key="import_classes_go").click().run()
    assert_ok(at)
    [record] = app_ws.list_datasets()
    assert record.name == "colours" and record.class_names == ["blue", "red"]
    assert record.num_images == 12
    page = texts(at)
    assert "Imported 12 images in 2 classes" in page
    assert "Health report" in page and "not images Pillow can read" in page
    assert at.selectbox(key="data_dataset").value == record.id
    assert at.query_params["dataset"] == record.id
    assert any("broken.png" in df.value.to_csv() for df in at.dataframe)


def test_data_page_class_upload_needs_two_named_classes(app_ws: Workspace) -> None:
    at = open_page("data")
    at.file_uploader(key="class_files_0").set_value([("r.png", png((255, 0, 0)), "image/png")])
    at.run()
    at.button(key="import_classes_go").click().run()
    assert "Every class with images needs a name." in texts(at)
    assert app_ws.list_datasets() == []


def test_data_page_zip_import_and_a_readable_error_for_a_bad_zip(app_ws: Workspace) -> None:
    at = open_page("data")
    at.file_uploader(key="import_zip").set_value(
        ("photos.zip", b"PK\x03\x04 broken", "application/zip")
    )
    at.run()
    at.button(key="import_zip_go").click().run()
    assert_ok(at)
    assert "not a valid zip archive" in "\n".join(e.value for e in at.error)
    assert app_ws.list_datasets() == []

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for i in range(5):
            zf.writestr(f"pets/cat/c{i}.png", png((250, 10 * i, 0)))
            zf.writestr(f"pets/dog/d{i}.png", png((0, 10 * i, 250)))
        zf.writestr("__MACOSX/pets/cat/._c0.png", b"junk")
    at.file_uploader(key="import_zip").set_value(("pets.zip", buffer.getvalue(), "application/zip"))
    at.run()
    at.button(key="import_zip_go").click().run()
    assert_ok(at)
    [record] = app_ws.list_datasets()
    assert record.name == "pets" and record.class_names == ["cat", "dog"]


def test_server_path_import_is_off_unless_allowed(
    app_ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_page("data")
    assert "switched off" in texts(at)
    src = tmp_path / "server"
    for label, color in (("a", (255, 0, 0)), ("b", (0, 255, 0))):
        (src / label).mkdir(parents=True)
        for i in range(3):
            (src / label / f"{i}.png").write_bytes(png((color[0], color[1], i)))
    monkeypatch.setenv("FINETUNE_ALLOW_SERVER_PATHS", "1")
    at = open_page("data")
    at.text_input(key="import_server_path").input(str(src))
    at.run()
    at.button(key="import_server_go").click().run()
    assert_ok(at)
    [record] = app_ws.list_datasets()
    assert record.name == "server" and record.num_images == 6


def test_data_page_gallery_rename_and_delete(app_ws: Workspace) -> None:
    dataset = create_demo_dataset(app_ws, per_class=30, size=32)
    at = open_page("data", dataset=dataset.id)
    assert "No problems found" in texts(at)
    assert len(at.image) == 24  # the first page of the first class
    assert at.pagination  # 30 images, 24 per page
    at.text_input(key=f"rename_{dataset.id}").input("shapes")
    at.button(key=f"rename_go_{dataset.id}").click().run()
    assert_ok(at)
    assert app_ws.get_dataset(dataset.id).name == "shapes"
    assert "Renamed to shapes." in texts(at)

    delete = at.button(key=f"delete_go_{dataset.id}")
    assert delete.disabled
    at.checkbox(key=f"delete_confirm_{dataset.id}").check().run()
    at.button(key=f"delete_go_{dataset.id}").click().run()
    assert_ok(at)
    assert app_ws.list_datasets() == []
    assert not app_ws.dataset_dir(dataset.id).exists()
    assert "Deleted shapes." in texts(at)


# --------------------------------------------------------------------- setup page
def test_setup_explains_invalid_settings_inline(app_ws: Workspace) -> None:
    dataset = create_demo_dataset(app_ws, per_class=6, size=32)
    at = open_page("setup", dataset=dataset.id)
    at.radio(key="cfg_weights_source").set_value("none").run()  # ImageNet may be offline
    assert at.button(key="start").disabled is False
    at.selectbox(key="cfg_strategy").set_value("finetune").run()
    at.number_input(key="cfg_epochs").set_value(2)
    at.number_input(key="cfg_freeze_epochs").set_value(5).run()
    assert "freeze_epochs must be between 0 and epochs." in [e.value for e in at.error]
    assert at.button(key="start").disabled
    cli = at.code[-1].value if at.code else ""
    assert "python -m finetune_core train" in cli and "--epochs 2" in cli
    download = next(d for d in at.download_button if "config" in d.label.lower())
    assert download is not None


def test_setup_offers_several_gpus_only_when_visible(
    app_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:

    dataset = create_demo_dataset(app_ws, per_class=6, size=32)
    at = open_page("setup", dataset=dataset.id)
    assert not [s for s in at.selectbox if s.label == "GPUs"]
    monkeypatch.setattr(launcher, "visible_gpus", lambda: 4)
    at = open_page("setup", dataset=dataset.id)
    [gpus] = [s for s in at.selectbox if s.label == "GPUs"]
    assert list(gpus.options) == ["1", "2", "3", "4", "all"]
    gpus.set_value(2).run()
    assert "--set devices=2" in at.code[-1].value


@pytest.mark.slow
def test_setup_start_submits_the_run_and_opens_training(app_ws: Workspace) -> None:
    dataset = create_demo_dataset(app_ws, per_class=8, size=32)
    at = open_page("setup", dataset=dataset.id)
    at.radio(key="cfg_weights_source").set_value("none")
    at.selectbox(key="cfg_strategy").set_value("probe")
    at.run()
    at.number_input(key="cfg_epochs").set_value(2)
    at.number_input(key="cfg_image_size").set_value(32)
    at.number_input(key="cfg_batch_size").set_value(16)
    at.selectbox(key="cfg_mixed_precision").set_value("off")
    at.checkbox(key="cfg_channels_last").uncheck()
    at.text_input(key="cfg_name").input("from setup")
    at.run()
    assert_ok(at)
    assert not at.error, [e.value for e in at.error]
    assert len(at.image) == 3 * 5, "augmentation preview: 3 images, original + 4 views each"

    # The LR finder runs on these settings; its suggestion can be taken over.
    at.button(key="lr_find").click().run()
    assert_ok(at)
    result = at.session_state["lr_finder"]["result"]
    suggested = result.suggested
    assert len(result.lrs) == len(result.losses) > 5 and suggested > 0
    assert f"({suggested:.1e})" in at.button(key="lr_use").label
    at.button(key="lr_use").click().run()
    assert at.number_input(key="cfg_lr").value == pytest.approx(suggested, rel=1e-6)

    at.button(key="start").click().run()
    assert_ok(at)
    assert at.title[0].value == "Training"
    [run] = app_ws.list_runs()
    assert at.query_params["run"] == run.id
    assert run.name == "from setup" and run.dataset_id == dataset.id
    assert run.auto_resume == 1  # "Resume by itself if interrupted", on by default
    config = RunConfig.from_dict(run.config)
    assert (config.strategy, config.weights, config.epochs, config.image_size) == (
        "probe", "none", 2, 32,
    )  # fmt: skip
    assert config.lr == pytest.approx(suggested, rel=1e-6)
    manager = services.get_job_manager()
    assert manager.wait(run.id, timeout=120) == RunStatus.SUCCEEDED


# --------------------------------------------------------------------- training page
@pytest.mark.slow
def test_with_two_cpu_slots_the_training_page_shows_both_runs_training(app_ws: Workspace) -> None:
    dataset = create_demo_dataset(app_ws, per_class=8, size=32)
    write_slots(app_ws, cpu=2)
    manager = services.get_job_manager()
    long = quick(dataset.id, strategy="full", epochs=200, early_stopping=False, num_threads=1)
    first = manager.submit(long.replace(name="first"))
    second = manager.submit(long.replace(name="second"))
    try:
        wait_until(lambda: len([r for r in manager.active_runs()
                                if r.status == RunStatus.RUNNING]) == 2, timeout=120)  # fmt: skip
        at = open_page("training", run=first)
        queue = at.dataframe[-1].value
        assert list(queue["Position"]) == ["training", "training"]
        assert sorted(queue["Run"]) == ["first", "second"] and list(queue["Device"]) == ["cpu"] * 2
        assert "cpu: 2 at once" in texts(at)
    finally:
        manager.stop(first)
        manager.stop(second)
        manager.wait(first, timeout=120)
        manager.wait(second, timeout=120)


@pytest.mark.slow
def test_training_page_live_view_stop_and_queue(app_ws: Workspace) -> None:
    dataset = create_demo_dataset(app_ws, per_class=8, size=32)
    manager = services.get_job_manager()
    long_run = manager.submit(quick(dataset.id, strategy="full", epochs=200, name="long"))
    queued = manager.submit(quick(dataset.id, name="waiting"))
    wait_until(lambda: manager.running() == long_run)

    at = open_page("training", run=queued)
    page = texts(at)
    assert "Queued at position 1" in page
    assert at.button(key="cancel_run")
    queue = at.dataframe[-1].value
    assert list(queue["Position"]) == ["training", "1"]
    assert list(queue["Device"]) == ["cpu", "cpu"]
    at.button(key="cancel_run").click().run()
    assert_ok(at)
    assert app_ws.get_run(queued).status == RunStatus.STOPPED

    home = AppTest.from_file(APP, default_timeout=90).run()
    assert ":blue-badge[:material/progress_activity: 1 running]" in [
        m.value for m in home.sidebar.markdown
    ]
    at = open_page("training", run=long_run)
    wait_until(lambda: (manager.snapshot(long_run).step or 0) > 0)
    at.run()
    # A second browser (or a refreshed tab) sees the same live run: state lives in the server.
    other = open_page("training")
    assert other.selectbox(key="training_run").value == long_run
    assert other.progress and other.button(key="stop_run")
    assert at.progress, "the live progress bar"
    assert "Epoch" in at.progress[0].proto.text
    assert {"ETA", "Images / s", "Train loss", "Early-stop patience"} <= {
        m.label for m in at.metric
    }
    at.button(key="stop_run").click().run()
    assert_ok(at)
    assert manager.wait(long_run, timeout=60) == RunStatus.STOPPED
    at.run()  # the fragment sees the end and reruns the page once
    assert_ok(at)
    assert "It can resume from its last checkpoint" in texts(at)
    assert at.button(key="resume_run")
    assert not [b for b in at.button if b.key == "stop_run"]


def test_training_page_shows_a_failed_run_with_its_traceback(app_ws: Workspace) -> None:
    app_ws.add_run(
        RunRecord(
            id="r-20260101-000000-dead",
            name="broken",
            status=RunStatus.FAILED,
            error="CUDA out of memory even at batch size 1",
            traceback="Traceback (most recent call last):\n  File trainer.py\nRuntimeError: oom",
            finished_at="2026-01-01T00:01:00+00:00",
        )
    )
    at = open_page("training", run="r-20260101-000000-dead")
    assert "The run failed: CUDA out of memory even at batch size 1" in [
        plain(e.value) for e in at.error
    ]
    assert any("RuntimeError: oom" in c.value for c in at.code)
    assert at.expander and at.expander[0].label == "Details"


# --------------------------------------------------------------------- after a run
@pytest.mark.slow
def test_training_page_after_a_finished_run(trained: tuple[Workspace, str, str]) -> None:
    ws, _, run_id = trained
    at = open_page("training")
    assert at.selectbox(key="training_run").value == run_id  # default: the newest run
    assert at.query_params["run"] == run_id
    assert any("Finished: best validation accuracy" in s.value for s in at.success)
    labels = {m.label for m in at.metric}
    assert {"Epochs run", "Training time", "Best epoch", "Best val. accuracy"} <= labels
    assert not at.progress


@pytest.mark.slow
def test_evaluation_page_metrics_cell_selection_and_evaluate(
    trained: tuple[Workspace, str, str],
) -> None:
    ws, _, run_id = trained
    folder = RunFolder(ws.run_dir(run_id))
    evaluation = folder.evaluation()
    at = open_page("evaluation", run=run_id)
    split = at.segmented_control(key=f"eval_split_{run_id}").value
    metrics = evaluation["splits"][split]
    cards = {m.label: m.value for m in at.metric}
    assert cards["Accuracy"] == f"{metrics['accuracy'] * 100:.1f}%"
    assert at.query_params["run"] == run_id
    assert any(f"?run={run_id}" in c.value for c in at.code), "the permalink"

    # A confusion-matrix cell: what a click on the chart stores.
    names = evaluation["class_names"]
    confusion = metrics["confusion"]
    i, j = max(((a, b) for a in range(len(names)) for b in range(len(names))),
               key=lambda ab: confusion[ab[0]][ab[1]])  # fmt: skip
    at.session_state["eval_cell"] = {"run": run_id, "split": split, "cell": [i, j]}
    at.run()
    assert_ok(at)
    heading = f"**True {names[i]}, predicted {names[j]}** · {confusion[i][j]} image(s)"
    assert any(m.value.startswith(heading) for m in at.markdown)
    captions = [c.value for c in at.caption if f"p\\({names[j]}\\)" in c.value]
    assert len(captions) == confusion[i][j]

    # The per-class table holds the numbers of eval.json.
    per_class = next(df.value for df in at.dataframe if "Precision" in df.value.columns)
    assert list(per_class["Class"]) == names
    assert list(per_class["Images"]) == [row["support"] for row in metrics["per_class"]]

    # Without eval.json the page offers to evaluate, and evaluating writes it again.
    (folder.path / "eval.json").unlink()
    at.run()
    assert "no evaluation yet" in texts(at)
    at.button(key="evaluate").click().run()
    assert_ok(at)
    assert folder.evaluation() is not None
    assert at.segmented_control(key=f"eval_split_{run_id}")


@pytest.mark.slow
def test_evaluation_page_most_confused_button_opens_its_cell(
    trained: tuple[Workspace, str, str],
) -> None:
    ws, _, run_id = trained
    at = open_page("evaluation", run=run_id)
    split = at.segmented_control(key=f"eval_split_{run_id}").value
    confused = RunFolder(ws.run_dir(run_id)).evaluation()["splits"][split]["most_confused"]
    if not confused:
        pytest.skip("the tiny run made no mistakes on this split")
    at.button(key="confused_0").click().run()
    assert_ok(at)
    pair = confused[0]
    assert at.session_state["eval_cell"]["cell"] == [pair["true_index"], pair["pred_index"]]
    assert any(m.value.startswith(f"**True {pair['true']}, predicted {pair['pred']}**")
               for m in at.markdown)  # fmt: skip


@pytest.mark.slow
def test_predict_page_single_images_and_batch_csv(trained: tuple[Workspace, str, str]) -> None:
    ws, dataset_id, run_id = trained
    images = sorted((ws.dataset_dir(dataset_id) / "images").rglob("*.jpg"))[:3]
    at = open_page("predict", run=run_id)
    at.file_uploader(key="predict_images").set_value(
        [(p.name, p.read_bytes(), "image/jpeg") for p in images]
    )
    at.run()
    assert_ok(at)
    tables = [df.value for df in at.dataframe if "Probability" in df.value.columns]
    assert len(tables) == 3
    assert all(abs(t["Probability"].sum() - 1.0) < 1e-3 for t in tables)

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for p in images:
            zf.writestr(f"batch/{p.name}", p.read_bytes())
        zf.writestr("batch/notes.txt", b"skip me")
    at.file_uploader(key="batch_files").set_value(
        ("batch.zip", buffer.getvalue(), "application/zip")
    )
    at.run()
    at.button(key="batch_go").click().run()
    assert_ok(at)
    assert "3 image(s) classified." in texts(at)
    assert at.download_button(key="batch_download").label == "Download predictions (CSV)"


@pytest.mark.slow
def test_runs_page_filter_rename_rerun_and_delete(trained: tuple[Workspace, str, str]) -> None:
    ws, dataset_id, run_id = trained
    ws.add_run(RunRecord(id="r-20260101-000000-beef", name="to delete", status=RunStatus.FAILED,
                         dataset_id=dataset_id, model="resnet18"))  # fmt: skip
    at = open_page("runs")
    table = at.dataframe[0].value
    assert set(table["Name"]) >= {"first run", "to delete"}
    at.multiselect(key="runs_status").select(RunStatus.FAILED).run()
    assert list(at.dataframe[0].value["Name"]) == ["to delete"]

    at.selectbox(key="runs_run").set_value("r-20260101-000000-beef").run()
    at.checkbox(key="runs_delete_confirm_r-20260101-000000-beef").check().run()
    at.button(key="runs_delete").click().run()
    assert_ok(at)
    assert ws.get_run("r-20260101-000000-beef") is None

    at = open_page("runs", run=run_id)
    at.text_input(key=f"runs_name_{run_id}").input("renamed run")
    at.button(key="runs_rename").click().run()
    assert ws.get_run(run_id).name == "renamed run"

    at.button(key="runs_rerun").click().run()
    assert_ok(at)
    assert at.title[0].value == "Training"
    new_id = at.query_params["run"]
    assert new_id != run_id and ws.get_run(new_id).config["epochs"] == 3
    manager = services.get_job_manager()
    manager.stop(new_id)
    manager.wait(new_id, timeout=60)
    ws.rename_run(run_id, "first run")
    ws.delete_run(new_id)


@pytest.mark.slow
def test_evaluation_page_report_download_and_verified_export(
    trained: tuple[Workspace, str, str],
) -> None:
    ws, _, run_id = trained
    folder = RunFolder(ws.run_dir(run_id))
    assert (folder.path / "report.html").is_file(), "the post-run hook wrote the report"
    at = open_page("evaluation", run=run_id)
    report = next(d for d in at.download_button if d.label == "Download report")
    assert report is not None
    assert "Not exported to checkpoint (state_dict) yet." in texts(at)
    at.selectbox(key="export_fmt").set_value("checkpoint")
    at.button(key="export_go").click().run()
    assert_ok(at)
    assert any(s.value.startswith("Verified") for s in at.success), [s.value for s in at.success]
    assert at.download_button(key="export_download").label.endswith("(.zip)")
    assert (folder.path / "export" / "checkpoint.zip").is_file()
    checks = next(df.value for df in at.dataframe if "Verified" in df.value.columns)
    assert list(checks["Verified"]) == ["yes"]


def test_a_dataset_with_errors_blocks_training_on_data_and_setup(
    app_ws: Workspace, tmp_path: Path
) -> None:
    from finetune_core.data import ingest

    src = tmp_path / "one-class"
    (src / "cat").mkdir(parents=True)
    for i in range(4):
        (src / "cat" / f"{i}.png").write_bytes(png((10 * i, 100, 100)))
    dataset = ingest(app_ws, src, name="only cats").dataset
    assert dataset.health.blocks_training

    at = open_page("data", dataset=dataset.id)
    assert any("Training is blocked" in e.value for e in at.error)
    assert any("Only one class" in e.value for e in at.error)
    link = next(p for p in at.get("page_link") if p.proto.label == "Train a model on it")
    assert link.proto.disabled

    at = open_page("setup", dataset=dataset.id)
    assert any("errors that block training" in e.value for e in at.error)
    assert at.button(key="start").disabled
    assert at.button(key="lr_find").disabled


def test_user_strings_are_shown_literally_never_as_markup(app_ws: Workspace) -> None:
    from ui.components import esc

    dataset = create_demo_dataset(app_ws, per_class=6, size=32)
    name = "**Cats** <img src=x onerror=alert(1)> :red[x]"
    app_ws.rename_dataset(dataset.id, name)
    at = open_page("data", dataset=dataset.id)
    assert esc(name) in [h.value for h in at.header]
    assert plain(esc(name)) == " ".join(name.split())
    at = open_page("setup", dataset=dataset.id)
    assert_ok(at)


def test_names_with_urls_are_never_live_links(app_ws: Workspace) -> None:
    """Issue 15 item 11: a run or dataset named like a URL must not become a link (GFM
    autolinks bare http:// and www. text): every markdown element showing it escapes the
    characters that would start one."""
    dataset = create_demo_dataset(app_ws, per_class=6, size=32)
    url = "https://evil.example/login www.evil.example"
    app_ws.rename_dataset(dataset.id, url)
    app_ws.add_run(RunRecord(id="r-20260101-000000-0bad", name=url, dataset_id=dataset.id,
                             creator="alice", status=RunStatus.FAILED, error="boom"))  # fmt: skip
    shown = 0
    for page, query in (("data", {"dataset": dataset.id}), ("runs", {}),
                        ("training", {"run": "r-20260101-000000-0bad"})):  # fmt: skip
        at = open_page(page, **query)
        assert_ok(at)
        for kind in ("title", "header", "subheader", "markdown", "caption", "info", "error"):
            for element in getattr(at, kind):
                text = str(element.value)
                if "evil" in text:
                    shown += 1
                    assert "https://" not in text and "www.evil" not in text, (page, text)
    assert shown >= 3  # the name is on every one of those pages
