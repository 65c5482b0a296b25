"""Setup checks an uploaded weights file when it is uploaded (issue 13 item 8): what it
holds is shown under the uploader; weights saved from another architecture are refused
there, naming it, and Start stays disabled."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torchvision

from finetune_core.data import create_demo_dataset
from finetune_core.store import Workspace
from tests.app.test_pages import app_ws, assert_ok, open_page, plain, texts  # noqa: F401 - fixture


def state_dict_bytes(arch: str) -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), buffer)
    return buffer.getvalue()


def test_uploaded_weights_are_checked_on_upload(app_ws: Workspace) -> None:  # noqa: F811
    dataset = create_demo_dataset(app_ws, per_class=6, size=32)
    at = open_page("setup", dataset=dataset.id)
    at.radio(key="cfg_weights_source").set_value("upload").run()
    at.selectbox(key="cfg_model").set_value("resnet18").run()
    assert_ok(at)

    uploader = at.file_uploader(key="weights_file_upload")
    uploader.set_value(("mine.pth", state_dict_bytes("resnet34"), "application/octet-stream"))
    at.run()
    assert_ok(at)
    shown = texts(at)
    assert (
        "Found: resnet34 weights · 120 of 120 resnet18 backbone tensors match · 96 unused · 512 features per image"
        in shown
    )
    errors = [plain(e.value) for e in at.error]
    assert any("looks like weights for resnet34, not resnet18" in e and "layer3.3.*" in e
               for e in errors), errors  # fmt: skip
    assert at.button(key="start").disabled

    at.selectbox(key="cfg_model").set_value("resnet34").run()  # the model it was saved from
    assert_ok(at)
    assert not at.error
    [ok] = [plain(s.value) for s in at.success if "backbone tensors" in s.value]
    assert "resnet34 weights, 216 of 216 backbone tensors match; 512 features per image" in ok
    assert at.button(key="start").disabled is False


class TinyBackbone(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 2)  # 6 features per image


def test_uploaded_pt2_backbone_shows_its_feature_size(
    app_ws: Workspace,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("FINETUNE_ALLOW_CUSTOM_BACKBONES", "1")
    batch = {"x": {0: torch.export.Dim("batch", min=1)}}
    program = torch.export.export(
        TinyBackbone(), (torch.randn(2, 3, 32, 32),), dynamic_shapes=batch
    )
    torch.export.save(program, str(tmp_path / "tiny.pt2"))
    dataset = create_demo_dataset(app_ws, per_class=6, size=32)
    at = open_page("setup", dataset=dataset.id)
    at.radio(key="cfg_weights_source").set_value("custom").run()
    at.number_input(key="cfg_image_size").set_value(32).run()
    at.selectbox(key="cfg_strategy").set_value("probe").run()  # a .pt2 stays frozen
    data = (tmp_path / "tiny.pt2").read_bytes()
    at.file_uploader(key="weights_file_custom").set_value(("tiny.pt2", data, "application/zip"))
    at.run()
    assert_ok(at)
    assert "a torch.export backbone giving 6 features per 32x32 image" in texts(at)
    assert not at.error, [e.value for e in at.error]

    at.number_input(key="cfg_image_size").set_value(64).run()  # it was exported at 32 px
    errors = [plain(e.value) for e in at.error]
    assert any("exported for 32x32 images but the image size is 64" in e for e in errors), errors
    assert at.button(key="start").disabled
