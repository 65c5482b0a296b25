"""Offline-aware defaults (issue 13 item 9): with ImageNet weights neither cached nor
downloadable, Setup says so next to the weights choice and Start is disabled; the demo's
settings use weights that load here; the demo splits are big enough to read.

"Offline" is real: torch hub's folder is an empty temporary one and the download goes to
a mirror on a closed local port ($FINETUNE_WEIGHTS_MIRROR), so the probe is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
import torch

from finetune_core.config import RunConfig
from finetune_core.data import create_demo_dataset
from finetune_core.data.demo import DEMO_PER_CLASS, DEMO_SPLIT
from finetune_core.models.availability import imagenet_availability
from finetune_core.models.classifier import build_classifier
from finetune_core.models.weights import MIRROR_ENV, imagenet_weights_path
from finetune_core.store import Workspace
from tests.app.test_pages import assert_ok, open_page, texts, use_workspace
from ui import services


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    use_workspace(monkeypatch, tmp_path / "ws")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9/models")  # the discard port: refused
    st.cache_resource.clear()
    st.cache_data.clear()
    yield services.get_workspace()
    st.cache_resource.clear()
    st.cache_data.clear()


def test_the_probe_tells_cached_downloadable_and_neither(offline: Workspace) -> None:
    missing = imagenet_availability("resnet18")
    assert (missing.cached, missing.reachable, missing.loads) == (False, False, False)
    assert "cannot be downloaded from here" in missing.message()
    assert imagenet_weights_path("resnet18").name in missing.message()
    path = imagenet_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")  # any file there counts as cached (its contents are checked at load)
    assert imagenet_availability("resnet18").loads


def test_setup_warns_before_start_when_imagenet_weights_cannot_load(offline: Workspace) -> None:
    dataset = create_demo_dataset(offline, per_class=6, size=32)
    at = open_page("setup", dataset=dataset.id)
    assert at.radio(key="cfg_weights_source").value == "imagenet"
    errors = [e.value for e in at.error]
    assert any("ImageNet weights for" in e and "cannot be downloaded from here" in e
               for e in errors), errors  # fmt: skip
    assert at.button(key="start").disabled
    assert not [b for b in at.button if b.key == "weights_download"]

    at.radio(key="cfg_weights_source").set_value("none").run()
    assert_ok(at)
    assert not any("cannot be downloaded" in e.value for e in at.error)
    assert at.button(key="start").disabled is False


def test_demo_setup_picks_weights_that_load_here(offline: Workspace) -> None:
    at = open_page("home")
    assert f"{3 * DEMO_PER_CLASS} small generated pictures" in texts(at)
    next(b for b in at.button if b.label == "Set up a run on the demo data").click().run()
    assert_ok(at)
    assert at.title[0].value == "Setup"
    [record] = offline.list_datasets()
    assert at.selectbox(key="setup_dataset").value == record.id
    assert at.radio(key="cfg_weights_source").value == "none"
    assert at.button(key="start").disabled is False
    assert not any("cannot be downloaded" in e.value for e in at.error)
    values = {k: at.session_state["setup_values"][k] for k in ("model", "image_size")}
    config = RunConfig.from_dict(
        {**RunConfig().to_dict(), **values, "dataset": record.id, "weights": "none"}
    )
    model, report = build_classifier(config.model, record.num_classes, config.weights,
                                     image_size=config.image_size)  # fmt: skip
    assert report.source == "none"
    with torch.no_grad():
        out = model(torch.zeros(1, 3, config.image_size, config.image_size))
    assert out.shape == (1, 3)


def test_the_demo_dataset_has_readable_val_and_test_splits(offline: Workspace) -> None:
    dataset = create_demo_dataset(offline, per_class=DEMO_PER_CLASS, split=DEMO_SPLIT)
    totals = {s: sum(c.values()) for s, c in dataset.split_counts().items()}
    assert totals == {"train": 222, "val": 114, "test": 114}
    assert all(n == 38 for c in ("val", "test") for n in dataset.split_counts()[c].values())
    again = create_demo_dataset(offline, per_class=DEMO_PER_CLASS, split=DEMO_SPLIT)
    assert again.id == dataset.id
    assert create_demo_dataset(offline, per_class=DEMO_PER_CLASS).id != dataset.id
