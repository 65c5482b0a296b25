"""Backbones: the torchvision zoo families and exported (.pt2) feature extractors.

For each torchvision family this module knows three things torchvision does not
say: which module is the classification head, how the layers split into parameter
groups from input to output (for freezing and discriminative learning rates), and
which layer is the last convolutional stage (for Grad-CAM). Everything numeric
(sizes, accuracy, FLOPs, URLs) comes from torchvision's weights enums instead.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torchvision.models import get_model_builder

from finetune_core.models.safe_pt2 import load_program

# The architectures offered in the dashboard, small to large within each family.
ZOO: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "convnext_tiny",
    "regnet_y_800mf",
    "vit_b_16",
)

N_BACKBONE_GROUPS = 4  # plus the head: 5 parameter groups per torchvision model
# A weights file whose backbone tensors match an architecture this well (shared keys of
# equal shape over all keys of both) was saved from it; 1.0 is an exact match.
SAME_ARCH_SCORE = 0.9

GroupItem = nn.Module | nn.Parameter


@dataclass(frozen=True)
class Family:
    """What differs between torchvision families."""

    prefix: str
    head: str  # dotted path of the final nn.Linear in the torchvision model
    groups: Callable[[nn.Module], list[list[GroupItem]]]  # backbone groups, input -> output
    cam: str | None  # dotted path of the last conv stage, None when there is none
    fixed_size: bool = False  # the input size is baked into the model (ViT)


def split_evenly(items: Sequence[Any], n: int) -> list[list[Any]]:
    """Split ``items`` into ``n`` contiguous chunks whose lengths differ by at most one."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        stop = start + size + (1 if i < extra else 0)
        out.append(list(items[start:stop]))
        start = stop
    return out


# The group functions reach submodules through ``get_submodule`` / ``get_parameter``
# (typed, unlike attribute access on an nn.Module) and the Sequential stages through a
# cast: torchvision builds them as nn.Sequential, which torch's typing cannot know.
def _resnet_groups(m: nn.Module) -> list[list[GroupItem]]:
    sub = m.get_submodule
    return [
        [sub("conv1"), sub("bn1"), sub("layer1")],
        [sub("layer2")],
        [sub("layer3")],
        [sub("layer4")],
    ]


def _regnet_groups(m: nn.Module) -> list[list[GroupItem]]:
    t = m.get_submodule("trunk_output")
    sub = t.get_submodule
    return [
        [m.get_submodule("stem"), sub("block1")],
        [sub("block2")],
        [sub("block3")],
        [sub("block4")],
    ]


def _features_groups(m: nn.Module) -> list[list[GroupItem]]:
    # mobilenet_v3 / efficientnet / convnext: `features` is a Sequential of stages;
    # what is left of `classifier` (mobilenet's hidden Linear, convnext's LayerNorm)
    # belongs with the last stage.
    features = cast(nn.Sequential, m.get_submodule("features"))
    groups: list[list[GroupItem]] = split_evenly(list(features), N_BACKBONE_GROUPS)
    groups[-1].append(m.get_submodule("classifier"))
    return groups


def _vit_groups(m: nn.Module) -> list[list[GroupItem]]:
    layers = cast(nn.Sequential, m.get_submodule("encoder.layers"))
    groups: list[list[GroupItem]] = split_evenly(list(layers), N_BACKBONE_GROUPS)
    groups[0][:0] = [
        m.get_submodule("conv_proj"),
        m.get_parameter("class_token"),
        m.get_parameter("encoder.pos_embedding"),
    ]
    groups[-1].append(m.get_submodule("encoder.ln"))
    return groups


FAMILIES: tuple[Family, ...] = (
    Family("resnet", "fc", _resnet_groups, "layer4"),
    Family("regnet", "fc", _regnet_groups, "trunk_output.block4"),
    Family("mobilenet_v3", "classifier.3", _features_groups, "features.-1"),
    Family("efficientnet", "classifier.1", _features_groups, "features.-1"),
    Family("convnext", "classifier.2", _features_groups, "features.-1"),
    Family("vit", "heads.head", _vit_groups, None, fixed_size=True),
)


def family_of(arch: str) -> Family:
    """The family rules for a torchvision architecture name."""
    for fam in FAMILIES:
        if arch.startswith(fam.prefix):
            return fam
    raise KeyError(f"No family rules for architecture {arch!r}.")


def resolve(module: nn.Module, path: str) -> nn.Module:
    """``module.get_submodule`` that also accepts negative indices ("features.-1")."""
    for part in path.split("."):
        if part.lstrip("-").isdigit():  # a numbered stage: the container is a Sequential
            module = cast(nn.Sequential, module)[int(part)]
        else:
            module = getattr(module, part)
    return module


def build_torchvision(arch: str, image_size: int | None = None) -> nn.Module:
    """A randomly initialised torchvision model (its 1000-class head still attached)."""
    kwargs: dict[str, Any] = {}
    if family_of(arch).fixed_size and image_size is not None:
        kwargs["image_size"] = image_size
    return get_model_builder(arch)(weights=None, **kwargs)


def strip_head(model: nn.Module, arch: str) -> int:
    """Replace the final Linear (and a Dropout right before it) by Identity; return its in_features.

    The dropout moves to the new head, where ``build_classifier(dropout=...)`` controls it.
    """
    fam = family_of(arch)
    parent_path, _, name = fam.head.rpartition(".")
    parent = resolve(model, parent_path) if parent_path else model
    # A numbered head ("classifier.3") sits in a Sequential; a named one is an attribute.
    seq = cast(nn.Sequential, parent) if name.isdigit() else None
    linear = getattr(parent, name) if seq is None else seq[int(name)]
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"{arch}: expected nn.Linear at {fam.head}, found {type(linear).__name__}.")
    if seq is not None:
        idx = int(name)
        seq[idx] = nn.Identity()
        if idx > 0 and isinstance(seq[idx - 1], nn.Dropout):
            seq[idx - 1] = nn.Identity()
    else:
        setattr(parent, name, nn.Identity())
    return linear.in_features


def backbone_group_names(backbone: nn.Module, arch: str, prefix: str = "") -> list[list[str]]:
    """Parameter names of each backbone group, input -> output; checks full coverage."""
    ids = {id(p): name for name, p in backbone.named_parameters()}
    groups: list[list[str]] = []
    for items in family_of(arch).groups(backbone):
        names: list[str] = []
        for item in items:
            params = [item] if isinstance(item, nn.Parameter) else list(item.parameters())
            names.extend(prefix + ids[id(p)] for p in params if id(p) in ids)
        groups.append(names)
    flat = [n for g in groups for n in g]
    expected = {prefix + n for n in ids.values()}
    if len(flat) != len(set(flat)) or set(flat) != expected:
        missing = sorted(expected - set(flat))[:5]
        raise RuntimeError(
            f"{arch}: parameter groups do not cover the model once (e.g. {missing})."
        )
    return groups


@dataclass(frozen=True)
class Signature:
    """What a zoo architecture's backbone holds: Classifier keys ("backbone.*") -> shapes,
    and the size of the feature vector it hands the head."""

    shapes: Mapping[str, tuple[int, ...]]
    feature_size: int


@functools.cache
def signature(arch: str) -> Signature:
    """The backbone signature of ``arch``, built once per process (shapes only)."""
    try:  # on the meta device: shapes without allocating or initialising anything
        with torch.device("meta"):
            net = build_torchvision(arch)
    except (NotImplementedError, RuntimeError):  # regnet computes its widths with real tensors
        net = build_torchvision(arch)
    feature_size = strip_head(net, arch)
    shapes = {"backbone." + k: tuple(v.shape) for k, v in net.state_dict().items()}
    return Signature(shapes, feature_size)


def fit_score(state: Mapping[str, torch.Tensor], arch: str) -> float:
    """How well a file's backbone tensors (Classifier keys) fit ``arch``: keys present in
    both with equal shapes, over the keys of either (1.0: saved from ``arch``)."""
    ref = signature(arch).shapes
    keys = [k for k in state if k.startswith("backbone.")]
    shared = sum(1 for k in keys if ref.get(k) == tuple(state[k].shape))
    union = len(ref) + len(keys) - shared
    return shared / union if union else 0.0


def guess_architecture(state: Mapping[str, torch.Tensor]) -> tuple[str | None, float]:
    """The zoo architecture a state_dict (Classifier keys) was saved from, with its
    :func:`fit_score`; (None, best score) when none fits at least ``SAME_ARCH_SCORE``."""
    scores = {name: fit_score(state, name) for name in ZOO}
    best = max(scores, key=lambda name: scores[name])
    return (best if scores[best] >= SAME_ARCH_SCORE else None), scores[best]


class ExportedBackbone(nn.Module):
    """A frozen ``torch.export`` feature extractor loaded from a .pt2 file.

    The module ``torch.export.load(path).module()`` returns refuses ``train()`` and
    ``eval()`` and cannot be pickled; this wrapper makes it behave inside a normal
    model: mode switches stop here (the graph was traced in eval mode), and pickling
    stores the file path plus the current tensors, reloading the graph from the path.
    """

    def __init__(self, net: nn.Module, path: str) -> None:
        super().__init__()
        self.net = net
        self.path = str(path)
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def train(self, mode: bool = True) -> ExportedBackbone:
        self.training = mode
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        modules = dict(state["_modules"])
        state["_net_state"] = modules.pop("net").state_dict()
        state["_modules"] = modules
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        net_state = state.pop("_net_state")
        self.__dict__.update(state)

        net = load_program(self.path).module()
        net.load_state_dict(net_state)
        for p in net.parameters():
            p.requires_grad_(False)
        self._modules["net"] = net

    def __deepcopy__(self, memo: dict[int, Any]) -> ExportedBackbone:
        clone = ExportedBackbone(copy.deepcopy(self.net, memo), self.path)
        clone.training = self.training
        return clone
