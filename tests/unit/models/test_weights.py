"""Weight sources, against real files: planted ImageNet files, state_dicts, .pt2 backbones."""

from __future__ import annotations

import copy
import functools
import http.server
import os
import pickle
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from finetune_core.models.classifier import WeightsError, arch_info, build_classifier
from finetune_core.models.weights import (
    MIRROR_ENV,
    checkpoint_dir,
    download_file,
    imagenet_weights_cached,
    imagenet_weights_path,
    read_state_dict,
)
from tests.helpers.pretrained import export_efficientnet_lite0_backbone, export_random_backbone


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    return home


def closed_port_url() -> str:
    """A URL on a local port nothing listens on (fault injection: offline)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def offline(monkeypatch) -> str:
    url = closed_port_url()
    monkeypatch.setenv(MIRROR_ENV, url)
    return url


@pytest.fixture
def http_root(tmp_path):
    """A real local HTTP server over a folder; yields (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def tv_resnet18(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=num_classes)


def assert_backbone_equals(model, tv_state: dict[str, torch.Tensor], head: str = "fc.") -> None:
    got = model.backbone.state_dict()
    body = {k: v for k, v in tv_state.items() if not k.startswith(head)}
    assert set(got) == set(body)
    for key, value in body.items():
        assert torch.equal(got[key], value), key


# ---------------------------------------------------------------- ImageNet source
def test_planted_imagenet_file_is_used_without_network(torch_home, offline):
    path = imagenet_weights_path("resnet18")
    assert path == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert not imagenet_weights_cached("resnet18") and not arch_info("resnet18").cached
    planted = tv_resnet18(seed=3).state_dict()
    path.parent.mkdir(parents=True)
    torch.save(planted, path)
    assert imagenet_weights_cached("resnet18") and arch_info("resnet18").cached

    model, report = build_classifier("resnet18", 3, "imagenet")
    assert_backbone_equals(model, planted)
    assert report.source == "imagenet" and report.replaced_head
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert "resnet18-f37072fd.pth" in report.message
    assert "New head for 3 classes" in report.message and "1000 outputs" in report.message

    same, report = build_classifier("resnet18", 1000, "imagenet")
    assert not report.replaced_head
    assert torch.equal(same.head[1].weight, planted["fc.weight"])

    path.write_bytes(path.read_bytes()[:1000])  # a broken file in the cache
    with pytest.raises(WeightsError, match="Delete .*resnet18-f37072fd.pth to download it again"):
        build_classifier("resnet18", 3, "imagenet")


def test_offline_download_names_file_url_and_folder(offline):
    with pytest.raises(WeightsError) as exc:
        build_classifier("resnet18", 3, "imagenet")
    msg = str(exc.value)
    folder = checkpoint_dir()
    assert "resnet18-f37072fd.pth" in msg
    assert str(folder) in msg
    assert f"{offline}/resnet18-f37072fd.pth" in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert "offline" in msg
    assert not folder.exists() or list(folder.iterdir()) == []


def test_download_with_progress_from_a_real_server(http_root, tmp_path):
    root, base = http_root
    payload = os.urandom(3 * 1024 * 1024 + 17)
    (root / "blob.bin").write_bytes(payload)
    calls: list[tuple[int, int]] = []
    dest = tmp_path / "dl" / "blob.bin"
    download_file(f"{base}/blob.bin", dest, lambda d, t: calls.append((d, t)))
    assert dest.read_bytes() == payload
    assert calls[0] == (0, len(payload)) and calls[-1] == (len(payload), len(payload))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert list(dest.parent.iterdir()) == [dest]


def test_cancelled_download_leaves_nothing(http_root, tmp_path):
    root, base = http_root
    (root / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024))

    def cancel(done, total):
        if done > 0:
            raise KeyboardInterrupt

    dest = tmp_path / "dl" / "blob.bin"
    with pytest.raises(KeyboardInterrupt):
        download_file(f"{base}/blob.bin", dest, cancel)
    assert list(dest.parent.iterdir()) == []


def test_corrupt_imagenet_download_is_refused(http_root, monkeypatch):
    root, base = http_root
    (root / "resnet18-f37072fd.pth").write_bytes(b"not the real file" * 1000)
    monkeypatch.setenv(MIRROR_ENV, base)
    with pytest.raises(WeightsError, match="corrupt"):
        build_classifier("resnet18", 3, "imagenet")
    assert list(checkpoint_dir().iterdir()) == []


# -------------------------------------------------------------- local state_dicts
def test_local_state_dict_other_head_size_is_replaced(tmp_path):
    src = tv_resnet18(num_classes=10, seed=4).state_dict()
    path = tmp_path / "mine.pth"
    torch.save(src, path)
    model, report = build_classifier("resnet18", 3, str(path))
    assert_backbone_equals(model, src)
    assert report.replaced_head and report.source == str(path)
    assert "10 outputs" in report.message
    same, report = build_classifier("resnet18", 10, path)
    assert not report.replaced_head
    assert torch.equal(same.head[1].bias, src["fc.bias"])


@pytest.mark.parametrize(
    "wrap", ["state_dict", "model", "model_state", "module_prefix", "lightning_prefix"]
)
def test_wrapped_checkpoints(tmp_path, wrap):
    src = tv_resnet18(seed=5).state_dict()
    if wrap == "module_prefix":
        obj = {"state_dict": {"module." + k: v for k, v in src.items()}, "epoch": 7}
    elif wrap == "lightning_prefix":
        obj = {"state_dict": {"model." + k: v for k, v in src.items()}, "global_step": 9}
    else:
        obj = {wrap: src, "epoch": 7, "best_acc": 0.5}
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    model, report = build_classifier("resnet18", 3, str(path))
    assert_backbone_equals(model, src)
    assert report.missing_keys == [] and report.unexpected_keys == []


def test_classifier_state_dict_file_restores_everything(tmp_path):
    torch.manual_seed(6)
    first, _ = build_classifier("mobilenet_v3_small", 4, "none")
    path = tmp_path / "classifier.pt"
    torch.save({"model": first.state_dict(), "epoch": 2}, path)
    second, report = build_classifier("mobilenet_v3_small", 4, str(path))
    assert not report.replaced_head and report.missing_keys == []
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(first.eval()(x), second.eval()(x))


def test_missing_and_unexpected_keys_are_reported(tmp_path):
    src = tv_resnet18(seed=7).state_dict()
    del src["layer4.1.bn2.weight"]
    src["extra.weight"] = torch.zeros(3)
    src["layer1.0.conv1.weight"] = torch.zeros(1, 2, 3, 3)
    path = tmp_path / "partial.pth"
    torch.save(src, path)
    _, report = build_classifier("resnet18", 3, str(path))
    assert report.missing_keys == ["backbone.layer4.1.bn2.weight"]
    assert report.unexpected_keys == ["backbone.extra.weight"]
    assert report.mismatched_keys == ["backbone.layer1.0.conv1.weight"]
    for key in ("layer4.1.bn2.weight", "extra.weight", "layer1.0.conv1.weight"):
        assert key in report.message


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "mobile.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises(WeightsError) as exc:
        build_classifier("resnet18", 3, str(path))
    msg = str(exc.value)
    assert "different architecture" in msg and "It looks like weights for mobilenet_v3_small" in msg
    odd = tmp_path / "odd.pth"
    torch.save({"encoder.w": torch.zeros(4, 4), "decoder.w": torch.zeros(4)}, odd)
    with pytest.raises(WeightsError, match="only 0 of 120 resnet18 backbone tensors") as exc:
        build_classifier("resnet18", 3, str(odd))
    assert "It looks like" not in str(exc.value)


def test_not_a_checkpoint_and_truncated_files(tmp_path):
    junk = tmp_path / "notes.pth"
    junk.write_bytes(b"this is a text file, not weights\n")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        build_classifier("resnet18", 3, str(junk))
    good = tmp_path / "good.pth"
    torch.save(tv_resnet18().state_dict(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated"):
        build_classifier("resnet18", 3, str(cut))
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3, "note": "no tensors"}, empty)
    with pytest.raises(WeightsError, match="holds no state_dict"):
        read_state_dict(empty)
    with pytest.raises(WeightsError, match="does not exist"):
        build_classifier("resnet18", 3, str(tmp_path / "nope.pth"))


class _Payload:
    """Unpickling this calls open(marker, "w"): code that must never run on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_code_in_a_pickle_is_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "x": _Payload(marker)}, path)
    with pytest.raises(WeightsError, match="run code"):
        build_classifier("resnet18", 3, str(path))
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.slow
def test_vit_weights_at_another_image_size_are_interpolated(tmp_path):
    big, _ = build_classifier("vit_b_16", 3, "none")
    path = tmp_path / "vit224.pth"
    torch.save(big.state_dict(), path)
    small, report = build_classifier("vit_b_16", 3, str(path), image_size=64)
    pos = small.backbone.encoder.pos_embedding
    assert pos.shape == (1, 1 + (64 // 16) ** 2, 768)
    assert report.missing_keys == report.mismatched_keys == report.unexpected_keys == []
    assert not report.replaced_head
    assert torch.equal(small.backbone.conv_proj.weight, big.backbone.conv_proj.weight)
    # the class token's position is kept; the 14x14 grid is resampled to 4x4
    assert torch.equal(pos[:, 0], big.backbone.encoder.pos_embedding[:, 0])


# --------------------------------------------------------------- .pt2 backbones
class TinyNet(nn.Module):
    def __init__(self, pooled: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pooled = pooled

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return y.mean(dim=(2, 3)) if self.pooled else y


def export_tiny(path: Path, *, dynamic: bool = True, pooled: bool = True, size: int = 32) -> Path:
    torch.manual_seed(0)
    net = TinyNet(pooled).eval()
    shapes = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic else None
    program = torch.export.export(net, (torch.randn(2, 3, size, size),), dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


def test_custom_backbone_loads_frozen_with_a_new_head(tmp_path):
    path = export_tiny(tmp_path / "tiny.pt2")
    model, report = build_classifier("custom", 3, str(path), image_size=32)
    assert model.feature_dim == 8 and model.arch == "custom"
    assert report.source == str(path) and "8 features" in report.message
    assert (model.mean, model.std) == (arch_info("resnet18").mean, arch_info("resnet18").std)
    x = torch.randn(5, 3, 32, 32)
    assert model(x).shape == (5, 3) and model.features(x).shape == (5, 8)
    assert model.cam_layer() is None
    assert model.trainable_groups() == [False, True]
    model.unfreeze()
    model.train_only_last(5)
    assert model.trainable_groups() == [False, True]
    model.train()  # the exported module itself refuses train(); the wrapper must not
    model.eval()

    with torch.no_grad():
        expected = model(x)
    rebuilt, _ = build_classifier("custom", 3, str(path), image_size=32)
    rebuilt.load_state_dict(model.state_dict())
    for other in (rebuilt, copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with torch.no_grad():
            assert torch.allclose(other(x), expected)


def test_static_batch_export_is_refused_with_how_to_fix(tmp_path):
    path = export_tiny(tmp_path / "static.pt2", dynamic=False)
    with pytest.raises(WeightsError) as exc:
        build_classifier("custom", 3, str(path), image_size=32)
    msg = str(exc.value)
    assert "fixed batch size of 2" in msg and "torch.export.Dim" in msg and "(N, D)" in msg


def test_wrong_output_rank_is_refused(tmp_path):
    path = export_tiny(tmp_path / "maps.pt2", pooled=False)
    with pytest.raises(WeightsError) as exc:
        build_classifier("custom", 3, str(path), image_size=32)
    assert "(1, 8, 32, 32)" in str(exc.value) and "(N, D)" in str(exc.value)


def test_other_image_size_and_bad_files(tmp_path):
    path = export_tiny(tmp_path / "tiny.pt2")
    with pytest.raises(WeightsError, match="exported for 32x32"):
        build_classifier("custom", 3, str(path), image_size=48)
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(WeightsError, match="not a torch.export program"):
        build_classifier("custom", 3, str(junk), image_size=32)
    with pytest.raises(WeightsError, match="choose the model 'custom'"):
        build_classifier("resnet18", 3, str(path))
    with pytest.raises(WeightsError, match=".pt2"):
        build_classifier("custom", 3, "none")


# ------------------------------------------------- a real pretrained backbone offline
@pytest.fixture(scope="module")
def lite0_exports(tmp_path_factory):

    folder = tmp_path_factory.mktemp("lite0")
    return {
        "pretrained": export_efficientnet_lite0_backbone(folder / "lite0.pt2", 64),
        "random": export_random_backbone(folder / "lite0_random.pt2", 64),
        "static": export_efficientnet_lite0_backbone(
            folder / "static.pt2", 64, dynamic_batch=False
        ),
    }


@pytest.mark.slow
def test_efficientnet_lite0_exports_load_as_custom_backbones(lite0_exports):
    for kind in ("pretrained", "random"):
        model, report = build_classifier("custom", 5, str(lite0_exports[kind]), image_size=64)
        assert model.feature_dim == 1280, report.message
        with torch.no_grad():
            assert model.eval()(torch.randn(3, 3, 64, 64)).shape == (3, 5)
    with pytest.raises(WeightsError, match="torch.export.Dim"):
        build_classifier("custom", 5, str(lite0_exports["static"]), image_size=64)


def digits_as_images(size: int) -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's real 8x8 handwritten digits, upscaled to RGB, ImageNet-normalised."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.repeat(1, 3, 1, 1)
    from finetune_core.models.classifier import imagenet_normalization

    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in imagenet_normalization())
    return (x - mean) / std, digits.target


@pytest.mark.slow
def test_pretrained_features_beat_random_weights_on_real_digits(lite0_exports):
    """A linear probe (logistic regression) on frozen features, 300 train / 200 val digits at 64 px.

    Both backbones are the same architecture; only the weights differ. The probe is
    fitted on the raw features, as a frozen-backbone probe sees them. (With features
    standardised first, random-weight features also separate these simple digits well;
    the test prints that figure too.)
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    images, labels = digits_as_images(64)
    order = np.random.default_rng(0).permutation(len(labels))
    train, val = order[:300], order[300:500]
    scores = {}
    for kind in ("pretrained", "random"):
        model, _ = build_classifier("custom", 10, str(lite0_exports[kind]), image_size=64)
        model.eval()
        with torch.no_grad():
            feats = torch.cat([model.features(b) for b in images[order[:500]].split(100)]).numpy()
        ftrain, fval = feats[:300], feats[300:]
        raw = LogisticRegression(max_iter=3000).fit(ftrain, labels[train])
        std = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        std.fit(ftrain, labels[train])
        scores[kind] = (raw.score(fval, labels[val]), std.score(fval, labels[val]))
    print(
        f"\nlinear probe on load_digits (300 train / 200 val, 64 px), val accuracy: "
        f"pretrained {scores['pretrained'][0]:.3f} vs random weights {scores['random'][0]:.3f} "
        f"(standardised features: {scores['pretrained'][1]:.3f} vs {scores['random'][1]:.3f}); "
        f"{time.perf_counter() - start:.1f} s"
    )
    assert scores["pretrained"][0] > 0.8
    assert scores["pretrained"][0] > scores["random"][0] + 0.3
