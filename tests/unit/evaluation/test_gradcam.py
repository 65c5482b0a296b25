"""Grad-CAM on real torchvision models and on small CNNs whose answer is known."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import resnet18

from finetune_core.evaluation.gradcam import explain, grad_cam, jet, overlay


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return resnet18(weights=None, num_classes=5)


def _image(size: int = 96, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, size, size, generator=g)


# ------------------------------------------------------------------ resnet18
def test_resnet18_layer4(resnet: nn.Module) -> None:
    resnet.train()
    resnet.layer2.eval()  # a mixed state must come back exactly as it was
    modes = {name: m.training for name, m in resnet.named_modules()}
    image = _image()
    result = explain(resnet, resnet.layer4, image)

    heat = result.heatmap
    assert result.method == "grad-cam" and "layer4" in result.note
    assert heat.shape == (96, 96) and heat.dtype == np.float32
    assert heat.min() == pytest.approx(0.0) and heat.max() == pytest.approx(1.0)
    assert heat.std() > 0.05  # not constant
    with torch.no_grad():
        resnet.eval()
        expected = int(resnet(image).argmax())
        probs = torch.softmax(resnet(image), dim=1)[0]
    for name, m in resnet.named_modules():
        m.training = modes[name]
    assert result.class_index == expected
    assert result.probability == pytest.approx(float(probs[expected]), abs=1e-5)

    assert _hooks(resnet) == 0 and len(resnet.layer4._forward_hooks) == 0
    assert {name: m.training for name, m in resnet.named_modules()} == modes
    assert all(p.grad is None for p in resnet.parameters())  # nothing accumulated


def test_class_index_changes_the_map(resnet: nn.Module) -> None:
    image = _image(seed=1)
    maps = [grad_cam(resnet, resnet.layer4, image, class_index=k) for k in range(5)]
    assert all(m.shape == (96, 96) for m in maps)
    assert any(not np.allclose(maps[0], m) for m in maps[1:])
    assert explain(resnet, resnet.layer4, image, class_index=3).class_index == 3


def test_frozen_model_works_and_flags_are_restored(resnet: nn.Module) -> None:
    for p in resnet.parameters():
        p.requires_grad_(False)
    resnet.fc.weight.requires_grad_(True)  # a probe-style mix
    flags = [p.requires_grad for p in resnet.parameters()]
    try:
        result = explain(resnet, resnet.layer4, _image(seed=2))
        assert result.method == "grad-cam" and result.heatmap.std() > 0.05
        assert [p.requires_grad for p in resnet.parameters()] == flags
        assert resnet.fc.weight.grad is None
    finally:
        for p in resnet.parameters():
            p.requires_grad_(True)


def test_hooks_and_modes_restored_after_an_error(resnet: nn.Module) -> None:
    resnet.train()
    with pytest.raises(ValueError, match="out of range: the model has 5 classes"):
        explain(resnet, resnet.layer4, _image(), class_index=7)
    assert _hooks(resnet) == 0
    assert all(m.training for m in resnet.modules())
    with pytest.raises(ValueError, match="unsqueeze"):
        explain(resnet, resnet.layer4, _image()[0])


def test_works_under_no_grad(resnet: nn.Module) -> None:
    """The app calls it from inference code that may have gradients switched off."""
    with torch.no_grad():
        result = explain(resnet, resnet.layer4, _image(seed=3))
    assert result.method == "grad-cam"


# -------------------------------------------------------- known-answer models
def _quadrant_model() -> nn.Sequential:
    """Class 0 = blue evidence, class 1 = red evidence, by hand-set weights."""
    model = nn.Sequential(
        nn.Conv2d(3, 2, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 2, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 2),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model[0].weight[0, 0, 1, 1] = 1.0  # channel 0: red
        model[0].weight[1, 2, 1, 1] = 1.0  # channel 1: blue
        model[0].bias.fill_(-0.5)  # only bright pixels fire
        model[2].weight[0, 0, 1, 1] = 1.0
        model[2].weight[1, 1, 1, 1] = 1.0
        model[6].weight[0, 1] = 1.0  # class 0 <- blue
        model[6].weight[1, 0] = 1.0  # class 1 <- red
    return model


def _quadrant_image() -> torch.Tensor:
    x = torch.full((1, 3, 64, 64), 0.2)
    x[0, 0, 4:28, 6:26] = 1.0  # red patch, top-left quadrant
    x[0, 2, 40:60, 38:62] = 1.0  # blue patch, bottom-right quadrant
    return x


def _share(heat: np.ndarray, rows: slice, cols: slice) -> float:
    return float(heat[rows, cols].sum() / heat.sum())


def test_heatmap_finds_the_evidence_by_construction() -> None:
    model, image = _quadrant_model(), _quadrant_image()
    top_left, bottom_right = (slice(0, 32), slice(0, 32)), (slice(32, 64), slice(32, 64))

    red = explain(model, model[3], image, class_index=1)
    assert red.method == "grad-cam" and red.note.startswith("Grad-CAM on 3 (16x16")
    assert _share(red.heatmap, *top_left) > 0.9
    blue = explain(model, model[3], image, class_index=0)
    assert _share(blue.heatmap, *bottom_right) > 0.9

    # the saliency fallback points at the same places
    sal = explain(model, None, image, class_index=1)
    assert sal.method == "saliency" and "No target layer was given" in sal.note
    assert sal.heatmap.shape == (64, 64)
    assert sal.heatmap.min() >= 0.0 and sal.heatmap.max() == pytest.approx(1.0)
    assert _share(sal.heatmap, *top_left) > 0.8


@pytest.mark.slow
def test_heatmap_finds_the_evidence_after_training() -> None:
    """A small CNN learns 'a bright square means class 1'; the square is always top-left."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 2),
    )

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(n, 3, 32, 32, generator=g) * 0.5
        y = torch.randint(0, 2, (n,), generator=g)
        for i in torch.nonzero(y).flatten().tolist():
            r, c = torch.randint(0, 10, (2,), generator=g).tolist()
            x[i, :, r : r + 6, c : c + 6] = 1.0
        return (x - 0.5) / 0.25, y

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        x, y = batch(32)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = batch(64)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9
    shares = [
        _share(explain(model, model[6], x[i : i + 1], 1).heatmap, slice(0, 16), slice(0, 16))
        for i in torch.nonzero(y).flatten()[:8].tolist()
    ]
    assert np.mean(shares) > 0.7, shares  # a uniform map would give 0.25


def test_token_output_falls_back_to_saliency() -> None:
    class TinyViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, 8, 8, stride=8)
            self.encoder = nn.Linear(8, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.patch(x).flatten(2).transpose(1, 2)  # (N, tokens, C)
            return self.head(torch.relu(self.encoder(tokens)).mean(dim=1))

    torch.manual_seed(0)
    model = TinyViT()
    result = explain(model, model.encoder, torch.randn(1, 3, 32, 32))
    assert result.method == "saliency"
    assert "(1, 16, 8) (transformer tokens)" in result.note
    assert result.heatmap.shape == (32, 32) and result.heatmap.std() > 0
    assert _hooks(model) == 0


# -------------------------------------------------------------------- overlay
def test_jet_colormap_endpoints() -> None:
    colors = jet(np.array([0.0, 0.5, 1.0]))
    assert colors.tolist() == [[0, 0, 128], [128, 255, 128], [128, 0, 0]]
    assert jet(np.array([0.25])).tolist() == [[0, 128, 255]]


def test_overlay() -> None:
    img = Image.new("RGB", (40, 30), (200, 200, 200))
    heat = np.zeros((15, 20), dtype=np.float32)
    heat[:, 10:] = 1.0  # right half hot
    out = overlay(img, heat, alpha=0.5)
    assert out.size == (40, 30) and out.mode == "RGB"
    left, right = out.getpixel((2, 15)), out.getpixel((38, 15))
    assert left[2] > left[0]  # cold: blue
    assert right[0] > right[2]  # hot: red
    assert overlay(img, heat, alpha=0.0).tobytes() == img.tobytes()
    gray = overlay(Image.new("L", (8, 8), 50), np.ones((8, 8)), alpha=1.0)
    assert gray.getpixel((0, 0)) == (128, 0, 0)
    with pytest.raises(ValueError, match="alpha must be between 0 and 1"):
        overlay(img, heat, alpha=1.5)
    with pytest.raises(ValueError, match="must be 2-D"):
        overlay(img, np.zeros((2, 2, 2)))


def test_overlay_on_a_real_result(resnet: nn.Module) -> None:
    pil = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    result = explain(resnet, resnet.layer4, _image())
    out = overlay(pil, result.heatmap)
    assert out.size == pil.size and out.tobytes() != pil.tobytes()


# ------------------------------------------------------------------------ GPU
@pytest.mark.gpu
def test_cuda_model_with_a_cpu_image_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=5)
    image = _image()
    cpu = explain(model, model.layer4, image)

    on_gpu = copy.deepcopy(model).cuda().to(memory_format=torch.channels_last)
    gpu = explain(on_gpu, on_gpu.layer4, image)  # the image follows the model to the GPU
    assert gpu.method == "grad-cam" and gpu.class_index == cpu.class_index
    assert np.corrcoef(gpu.heatmap.ravel(), cpu.heatmap.ravel())[0, 1] > 0.99
    np.testing.assert_allclose(gpu.heatmap, cpu.heatmap, atol=0.05)

    bf16 = copy.deepcopy(model).cuda().to(torch.bfloat16)
    low = explain(bf16, bf16.layer4, image)
    assert low.heatmap.dtype == np.float32 and low.heatmap.shape == (96, 96)
    assert low.heatmap.min() >= 0.0 and low.heatmap.max() == pytest.approx(1.0)
    assert np.corrcoef(low.heatmap.ravel(), cpu.heatmap.ravel())[0, 1] > 0.9
    assert _hooks(bf16) == 0
