"""The zoo and the Classifier: real torchvision models, random weights, tiny batches."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
from torch import nn
from torchvision.models import get_model_weights

from finetune_core.models.backbone import split_evenly
from finetune_core.models.classifier import (
    ZOO,
    Classifier,
    UnknownArchitectureError,
    WeightsError,
    arch_info,
    build_classifier,
    estimate_train_seconds_per_image,
    imagenet_normalization,
    list_architectures,
    set_frozen_bn_eval,
)

REQUIRED = {
    "resnet18",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "convnext_tiny",
    "regnet_y_800mf",
    "vit_b_16",
}
BIG = {"vit_b_16", "efficientnet_v2_s", "resnet50", "convnext_tiny"}
FAST = ("resnet18", "mobilenet_v3_small")


@pytest.fixture(autouse=True)
def _isolated_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def _zoo_params(fast: set[str] | tuple[str, ...]):
    return [a if a in fast else pytest.param(a, marks=pytest.mark.slow) for a in ZOO]


# ------------------------------------------------------------------------ zoo info
def test_zoo_holds_the_required_architectures():
    names = [info.name for info in list_architectures()]
    assert set(names) >= REQUIRED
    assert names == list(ZOO)


def test_info_comes_from_torchvision_meta():
    info = arch_info("resnet18")
    assert info.imagenet_top1 == 69.758
    assert info.imagenet_top5 == 89.078
    assert info.params == 11_689_512
    assert info.gflops == 1.814
    assert (info.input_size, info.resize_size) == (224, 256)
    assert info.mean == (0.485, 0.456, 0.406)
    assert info.std == (0.229, 0.224, 0.225)
    assert info.head == "fc"
    assert info.weights_file == "resnet18-f37072fd.pth"
    assert info.weights_url == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert info.cached is False
    v2 = arch_info("efficientnet_v2_s")
    assert (v2.input_size, v2.resize_size) == (384, 384)
    assert arch_info("vit_b_16").fixed_size is True
    assert arch_info("mobilenet_v3_small").head == "classifier.3"


@pytest.mark.parametrize("name", ZOO)
def test_every_info_matches_its_weights_enum(name):
    weights = get_model_weights(name).DEFAULT
    info = arch_info(name)
    assert info.params == weights.meta["num_params"]
    assert info.imagenet_top1 == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    assert info.gflops == weights.meta["_ops"]
    assert info.input_size == weights.transforms().crop_size[0]
    assert info.weights_url == weights.url
    assert info.weights_url.endswith("/" + info.weights_file)


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(UnknownArchitectureError) as exc:
        arch_info("resnet19")
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, WeightsError)
    assert "resnet19" in str(exc.value) and "resnet18" in str(exc.value)
    assert "custom" in str(exc.value)
    with pytest.raises(UnknownArchitectureError):
        build_classifier("resnet19", 3, "none")


def test_imagenet_normalization_is_torchvision_s():
    mean, std = imagenet_normalization()
    tf = get_model_weights("resnet18").DEFAULT.transforms()
    assert list(mean) == tf.mean and list(std) == tf.std


# ------------------------------------------------------------- building each arch
def _execution_order(model: Classifier, x: torch.Tensor) -> dict[int, int]:
    """id(param) -> index of the first forward call of the leaf module that owns it."""
    order: dict[int, int] = {}
    calls = 0
    hooks = []

    def hook(module, _inp):  # a pre-hook: containers with own parameters (ViT) count at entry
        nonlocal calls
        for p in module.parameters(recurse=False):
            order.setdefault(id(p), calls)
        calls += 1

    for m in model.modules():
        if any(True for _ in m.parameters(recurse=False)):
            hooks.append(m.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return order


@pytest.mark.parametrize("arch", _zoo_params(set(ZOO) - BIG))
def test_groups_cover_every_parameter_once(arch):
    model, report = build_classifier(arch, 3, "none")
    assert report.source == "none" and report.replaced_head
    assert model.head[1].in_features == model.feature_dim
    assert (model.mean, model.std) == (arch_info(arch).mean, arch_info(arch).std)
    groups = model.param_groups()
    assert 4 <= len(groups) <= 6
    every = list(model.parameters())
    flat = [id(p) for g in groups for p in g]
    assert len(flat) == len(set(flat)) == len(every)
    assert set(flat) == {id(p) for p in every}
    assert [id(p) for p in groups[-1]] == [id(p) for p in model.head.parameters()]
    # the torchvision dropout before the old head moved into the new head
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.backbone.modules())


@pytest.mark.parametrize("arch", _zoo_params(FAST))
def test_build_forward_in_group_order(arch):
    torch.manual_seed(0)
    model, _ = build_classifier(arch, 3, "none")
    size = model.input_size if arch.startswith("vit") else 64
    x = torch.randn(2, 3, size, size)
    model.eval()
    with torch.no_grad():
        out = model(x)
        feats = model.features(x)
    assert out.shape == (2, 3)
    assert feats.shape == (2, model.feature_dim)
    groups = model.param_groups()
    assert [id(p) for p in groups[-1]] == [id(p) for p in model.head.parameters()]

    # input -> output: every module of group i runs before every module of group i+1
    order = _execution_order(model, x)
    spans = []
    for g in groups:
        idx = [order[id(p)] for p in g if id(p) in order]
        assert idx, "each group has parameters that take part in forward"
        spans.append((min(idx), max(idx)))
    for (_, end), (start, _) in zip(spans[:-1], spans[1:], strict=True):
        assert end < start


@pytest.mark.parametrize("arch", FAST)
def test_freezing_by_groups(arch):
    model, _ = build_classifier(arch, 3, "none")
    n = model.num_groups
    model.freeze_backbone()
    assert model.trainable_groups() == [False] * (n - 1) + [True]
    model.train_only_last(2)
    assert model.trainable_groups() == [False] * (n - 2) + [True, True]
    model.unfreeze()
    assert model.trainable_groups() == [True] * n
    model.train_only_last(n + 5)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError):
        model.train_only_last(0)

    # gradients reach only the trainable groups
    model.freeze_backbone()
    model.train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_frozen_batchnorm_stays_in_eval_mode():
    model, _ = build_classifier("resnet18", 3, "none")
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    model.freeze_backbone()
    model.train()
    assert model.training and model.head.training
    assert not any(bn.training for bn in bns)
    before = bns[0].running_mean.clone()
    model(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert torch.equal(bns[0].running_mean, before)

    model.train_only_last(2)  # layer4 + head
    model.train()
    layer4 = {id(m) for m in model.backbone.layer4.modules()}
    assert all(bn.training == (id(bn) in layer4) for bn in bns)

    model.unfreeze()
    model.train()
    assert all(bn.training for bn in bns)
    model.eval()
    assert not any(bn.training for bn in bns)

    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4)).train()
    plain[1].requires_grad_(False)
    assert set_frozen_bn_eval(plain) == 1
    assert (plain[1].training, plain[2].training) == (False, True)


def test_cam_layer_is_the_last_conv_stage():
    model, _ = build_classifier("resnet18", 3, "none")
    assert model.cam_layer() is model.backbone.layer4
    seen = []
    handle = model.cam_layer().register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model.eval()(torch.randn(1, 3, 64, 64))
    handle.remove()
    assert seen == [torch.Size([1, 512, 2, 2])]
    mobile, _ = build_classifier("mobilenet_v3_small", 3, "none")
    assert mobile.cam_layer() is mobile.backbone.features[-1]


@pytest.mark.slow
def test_vit_has_no_cam_layer_and_takes_its_image_size():
    model, _ = build_classifier("vit_b_16", 2, "none", image_size=64)
    assert model.cam_layer() is None
    assert model.input_size == 64
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_checkpoint_round_trip_and_pickle():
    torch.manual_seed(1)
    model, _ = build_classifier("mobilenet_v3_small", 4, "none", dropout=0.2)
    assert model.head[0].p == 0.2
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)

    rebuilt, _ = build_classifier("mobilenet_v3_small", 4, "none", dropout=0.2)
    rebuilt.load_state_dict(model.state_dict())  # strict
    clone = pickle.loads(pickle.dumps(model))
    deep = copy.deepcopy(model)
    for other in (rebuilt, clone, deep):
        with torch.no_grad():
            assert torch.allclose(other.eval()(x), expected)
    assert clone.arch == "mobilenet_v3_small" and clone.num_classes == 4
    assert len(clone.param_groups()) == model.num_groups


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        build_classifier("resnet18", 0, "none")
    with pytest.raises(ValueError, match="dropout"):
        build_classifier("resnet18", 3, "none", dropout=1.0)


# ------------------------------------------------------------------------- speed
def test_estimate_train_seconds_per_image():
    r18 = estimate_train_seconds_per_image("resnet18", 224)
    assert 0.01 < r18 < 1.0
    assert estimate_train_seconds_per_image("resnet18", 448) == pytest.approx(4 * r18)
    assert estimate_train_seconds_per_image("mobilenet_v3_small", 224) < r18
    assert estimate_train_seconds_per_image("resnet50", 224) > r18
    assert estimate_train_seconds_per_image("resnet18", 224, "cuda:0") < r18 / 10
    assert estimate_train_seconds_per_image("resnet18", 224, "mps") == r18
    assert math.isnan(estimate_train_seconds_per_image("custom", 224))


def test_split_evenly():
    assert split_evenly(list(range(9)), 4) == [[0, 1, 2], [3, 4], [5, 6], [7, 8]]
    assert split_evenly([1, 2], 4) == [[1], [2]]
