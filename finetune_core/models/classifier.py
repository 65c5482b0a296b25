"""The model zoo and the Classifier the trainer, evaluator and exporter share.

``build_classifier(arch, num_classes, weights)`` returns a ``Classifier``: a
backbone mapping normalised images to features, plus a new head
(Dropout + Linear). Architecture facts (parameters, input size, normalisation,
ImageNet accuracy, FLOPs, weights URL) are read from torchvision's weights enums.
A checkpoint rebuilds with ``build_classifier(arch, num_classes, "none",
dropout=..., image_size=...)`` followed by ``load_state_dict``; for "custom" the
weights argument is the run folder's copy of the .pt2 file.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from finetune_core.models.backbone import (
    ZOO,
    backbone_group_names,
    build_torchvision,
    family_of,
    resolve,
    strip_head,
)
from finetune_core.models.weights import (
    LoadReport,
    Progress,
    UnknownArchitectureError,
    WeightsError,
    apply_state_dict,
    check_arch,
    default_weights,
    download_imagenet_weights,
    imagenet_weights_cached,
    imagenet_weights_path,
    imagenet_weights_url,
    load_exported_backbone,
    read_state_dict,
    weights_file_name,
)

__all__ = [
    "ZOO",
    "ArchInfo",
    "Classifier",
    "LoadReport",
    "UnknownArchitectureError",
    "WeightsError",
    "arch_info",
    "build_classifier",
    "estimate_train_seconds_per_image",
    "imagenet_normalization",
    "list_architectures",
    "measure_train_seconds_per_image",
    "set_frozen_bn_eval",
]

CUSTOM = "custom"


# ----------------------------------------------------------------------- the zoo
@dataclass(frozen=True)
class ArchInfo:
    """One zoo architecture, as torchvision's default ImageNet weights describe it."""

    name: str
    params: int
    input_size: int  # crop size of the weights' eval transforms
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    imagenet_top1: float | None
    gflops: float | None
    head: str  # dotted path of the classification Linear in the torchvision model
    weights_file: str
    weights_url: str
    cached: bool  # the ImageNet file is already in torch hub's checkpoint folder
    imagenet_top5: float | None = None
    file_size_mb: float | None = None
    fixed_size: bool = False  # the model is built for one input size (ViT)
    family: str = ""


@functools.cache
def _static_info(name: str) -> ArchInfo:
    weights = default_weights(name)
    meta = weights.meta
    tf = weights.transforms()
    metrics = meta.get("_metrics", {}).get("ImageNet-1K", {})
    fam = family_of(name)
    return ArchInfo(
        name=name,
        params=int(meta["num_params"]),
        input_size=int(tf.crop_size[0]),
        resize_size=int(tf.resize_size[0]),
        mean=tuple(float(v) for v in tf.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in tf.std),  # type: ignore[arg-type]
        imagenet_top1=metrics.get("acc@1"),
        gflops=meta.get("_ops"),
        head=fam.head,
        weights_file=weights_file_name(name),
        weights_url=weights.url,
        cached=False,
        imagenet_top5=metrics.get("acc@5"),
        file_size_mb=meta.get("_file_size"),
        fixed_size=fam.fixed_size,
        family=fam.prefix,
    )


def arch_info(name: str) -> ArchInfo:
    """Facts about one zoo architecture (unknown names raise UnknownArchitectureError)."""
    check_arch(name)
    info = _static_info(name)
    return replace(
        info, cached=imagenet_weights_cached(name), weights_url=imagenet_weights_url(name)
    )


def list_architectures() -> list[ArchInfo]:
    """Every zoo architecture, in the zoo's order."""
    return [arch_info(name) for name in ZOO]


def imagenet_normalization() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean and std, as torchvision's resnet18 weights transforms state them."""
    info = _static_info("resnet18")
    return info.mean, info.std


# ---------------------------------------------------------------- the classifier
class Classifier(nn.Module):
    """A backbone (images -> features) and a head (features -> logits).

    Parameter groups run from input to output with the head last; freezing works
    on whole groups. ``train()`` keeps BatchNorm layers whose parameters are all
    frozen in eval mode (see ``set_frozen_bn_eval``). A custom .pt2 backbone is
    always frozen: ``unfreeze`` and ``train_only_last`` only reach the head.
    """

    def __init__(
        self,
        arch: str,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        dropout: float = 0.0,
        input_size: int = 224,
        backbone_groups: list[list[str]] | None = None,
        cam_path: str | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.dropout = dropout
        self.input_size = input_size
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        self.trainable_backbone = arch != CUSTOM
        names = backbone_groups or [["backbone." + n for n, _ in backbone.named_parameters()]]
        self._group_names = [g for g in names if g] + [
            ["head." + n for n, _ in self.head.named_parameters()]
        ]
        self._cam_path = cam_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output, (N, feature_dim)."""
        return self.backbone(x)

    def param_groups(self) -> list[list[nn.Parameter]]:
        """Parameters in groups from input to output; the head is the last group."""
        params = dict(self.named_parameters())
        return [[params[n] for n in group] for group in self._group_names]

    @property
    def num_groups(self) -> int:
        return len(self._group_names)

    def train_only_last(self, n_groups: int) -> None:
        """Train the last ``n_groups`` groups (the head counts as one); freeze the rest."""
        if n_groups < 1:
            raise ValueError("n_groups must be at least 1 (the head).")
        groups = self.param_groups()
        first_trainable = max(0, len(groups) - n_groups)
        if not self.trainable_backbone:
            first_trainable = len(groups) - 1
        for i, group in enumerate(groups):
            for p in group:
                p.requires_grad_(i >= first_trainable)

    def freeze_backbone(self) -> None:
        """Train the head only."""
        self.train_only_last(1)

    def unfreeze(self) -> None:
        """Train every group (a custom .pt2 backbone stays frozen)."""
        self.train_only_last(self.num_groups)

    def trainable_groups(self) -> list[bool]:
        """For each group, whether any of its parameters trains."""
        return [any(p.requires_grad for p in g) for g in self.param_groups()]

    def cam_layer(self) -> nn.Module | None:
        """The last convolutional stage, for Grad-CAM (None for ViT and custom backbones)."""
        return resolve(self.backbone, self._cam_path) if self._cam_path else None

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if mode:
            set_frozen_bn_eval(self)
        return self


def set_frozen_bn_eval(model: nn.Module) -> int:
    """Put BatchNorm layers whose parameters are all frozen in eval mode; return how many.

    A frozen layer should not drift its running statistics while the rest trains.
    ``Classifier.train()`` calls this itself; call it after ``train()`` on other models.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
                count += 1
    return count


# --------------------------------------------------------------------- building
def build_classifier(
    arch: str,
    num_classes: int,
    weights: str | Path = "imagenet",
    *,
    dropout: float = 0.0,
    image_size: int | None = None,
    progress: Progress | None = None,
) -> tuple[Classifier, LoadReport]:
    """Build a Classifier and load its weights.

    ``weights``: "imagenet" (torchvision's default weights, downloaded to torch hub's
    checkpoint folder if missing), "none" (random), a .pt/.pth state_dict for ``arch``,
    or, with ``arch="custom"``, a .pt2 backbone exported with torch.export.
    ``image_size`` fixes a ViT's input size and is the size a .pt2 is validated at.
    """
    if num_classes < 1:
        raise ValueError("num_classes must be at least 1.")
    if not 0 <= dropout < 1:
        raise ValueError("dropout must be in [0, 1).")
    weights_str = str(weights)
    if arch == CUSTOM or weights_str.endswith(".pt2"):
        return _build_custom(arch, num_classes, weights_str, dropout, image_size)
    check_arch(arch)
    info = _static_info(arch)
    size = image_size or info.input_size
    net = _torchvision_net(arch, size, info.fixed_size)
    feature_dim = strip_head(net, arch)
    model = Classifier(
        arch,
        net,
        feature_dim,
        num_classes,
        info.mean,
        info.std,
        dropout=dropout,
        input_size=size,
        backbone_groups=backbone_group_names(net, arch, prefix="backbone."),
        cam_path=family_of(arch).cam,
    )
    return model, _load_weights(model, arch, weights_str, progress)


def _torchvision_net(arch: str, size: int, fixed_size: bool) -> nn.Module:
    """The torchvision model for ``arch`` (random weights), checked against ``size``."""
    if fixed_size:
        # A ViT is built for one size (any multiple of its patch size; the ImageNet
        # position embeddings are interpolated to it), whatever meta's min_size says.
        try:
            return build_torchvision(arch, size)
        except AssertionError as exc:
            raise ValueError(
                f"{arch} needs an image size divisible by its patch size: {exc}"
            ) from exc
    min_size = max(default_weights(arch).meta.get("min_size", (1, 1)))
    if size < min_size:
        raise ValueError(f"{arch} needs images of at least {min_size} px (got {size}).")
    return build_torchvision(arch)


def _load_weights(
    model: Classifier, arch: str, weights_str: str, progress: Progress | None
) -> LoadReport:
    """Load ``weights_str`` ("none", "imagenet" or a .pt/.pth path) into ``model``."""
    if weights_str == "none":
        return LoadReport(source="none", replaced_head=True, message="Random initialisation.")
    if weights_str == "imagenet":
        path = imagenet_weights_path(arch)
        if not path.is_file():
            download_imagenet_weights(arch, progress)
        try:
            state = read_state_dict(path)
        except WeightsError as exc:
            raise WeightsError(f"{exc} Delete {path} to download it again.") from exc
        label = f"{path.name} (ImageNet)"
        return apply_state_dict(model, state, arch, source="imagenet", label=label)
    if not Path(weights_str).is_file():
        raise WeightsError(
            f"Weights must be 'imagenet', 'none' or the path of a .pt/.pth (or .pt2) file; "
            f"{weights_str} does not exist."
        )
    return apply_state_dict(model, read_state_dict(weights_str), arch, source=weights_str)


def _build_custom(
    arch: str, num_classes: int, weights: str, dropout: float, image_size: int | None
) -> tuple[Classifier, LoadReport]:
    if arch != CUSTOM:
        raise WeightsError(
            f"A .pt2 file is a complete backbone: choose the model 'custom' to use it (not {arch})."
        )
    if not weights.endswith(".pt2"):
        raise WeightsError(
            "The custom model needs a .pt2 backbone file exported with torch.export as its weights."
        )
    size = image_size or _static_info("resnet18").input_size
    backbone, feature_dim = load_exported_backbone(weights, size)
    mean, std = imagenet_normalization()
    model = Classifier(
        CUSTOM, backbone, feature_dim, num_classes, mean, std, dropout=dropout, input_size=size
    )
    model.freeze_backbone()
    message = f"Custom backbone {Path(weights).name}: {feature_dim} features per image, frozen."
    return model, LoadReport(source=weights, replaced_head=True, message=message)


# ------------------------------------------------------------------ speed estimate
# Calibration of a training step (forward + backward + SGD step, fp32, 224 px), measured
# with measure_train_seconds_per_image: seconds per image ~= SECONDS_PER_GFLOP * gflops
# + OVERHEAD_S, both scaled by (image_size / 224) ** 2. The overhead stands for what FLOPs
# miss (memory-bound depthwise convs and activations, kernel launches). Both constants
# are fitted through resnet18 (1.814 GFLOPs) and mobilenet_v3_small (0.057 GFLOPs):
# - cpu: the 2-core build machine, torch 2.14, batch 16: resnet18 93.6 ms/img,
#   mobilenet_v3_small 12 ms/img (the least contended of several runs; that machine was
#   shared, so read it as +-2x).
# - cuda: one H200, torch 2.11, batch 128: resnet18 0.194 ms/img, mobilenet_v3_small
#   0.138 ms/img. resnet50 measured 0.470 where the fit says 0.27: rough indeed. Real
#   runs use bf16 and channels_last and are usually faster; input decoding may dominate.
CALIBRATION: dict[str, tuple[float, float]] = {
    # device type: (SECONDS_PER_GFLOP, OVERHEAD_S)
    "cpu": (0.0464, 0.0094),
    "cuda": (3.19e-5, 1.36e-4),
}


def estimate_train_seconds_per_image(arch: str, image_size: int, device: str = "cpu") -> float:
    """Rough seconds per training image, for "estimated time per epoch".

    Returns NaN for "custom" (its FLOPs are unknown). Devices without a calibration
    (mps) use the CPU figures, an upper bound.
    """
    if arch == CUSTOM:
        return math.nan
    gflops = arch_info(arch).gflops or 0.0
    kind = device.split(":")[0]
    per_gflop, overhead = CALIBRATION.get(kind, CALIBRATION["cpu"])
    return (per_gflop * gflops + overhead) * (image_size / 224) ** 2


def measure_train_seconds_per_image(
    arch: str, image_size: int = 224, device: str = "cpu", batch_size: int = 16, steps: int = 5
) -> float:
    """Time real fp32 training steps of ``arch`` on random data; seconds per image.

    The calibration above comes from this; the setup page may offer it for a
    precise estimate on the user's own machine.
    """
    model, _ = build_classifier(arch, 10, "none", image_size=image_size)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(2):  # warm-up: allocator, kernel selection
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / (steps * batch_size)
