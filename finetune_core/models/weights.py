"""Weight sources: torchvision's ImageNet files, local state_dicts and .pt2 backbones.

Nothing here calls ``weights.get_state_dict`` (which may download behind the
user's back): an ImageNet file is read from torch hub's checkpoint folder, and
downloaded explicitly, with progress and a clear offline message, when missing.
Every file is read with ``torch.load(weights_only=True)``, so a checkpoint that
would run code when unpickled is refused instead of executed.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import get_model_weights

from finetune_core.models.backbone import ZOO, ExportedBackbone, family_of
from finetune_core.models.safe_pt2 import UnsafeProgramError, load_program
from finetune_core.models.weights_fit import (
    Shapes,
    WeightsError,
    best_key_layout,
    plan_state_dict,
    resize_vit_positions,
    short_list,
)

Progress = Callable[[int, int], None]

# An internal mirror of download.pytorch.org/models for machines without internet:
# the file is fetched from "$FINETUNE_WEIGHTS_MIRROR/<file name>".
MIRROR_ENV = "FINETUNE_WEIGHTS_MIRROR"
TIMEOUT_S = 10.0  # per socket operation: fail fast when offline
CHUNK = 1 << 20
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model_state", "model")
STRIP_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # torch hub's "name-<sha256 prefix>.pth"


class UnknownArchitectureError(WeightsError, ValueError):
    """The architecture name is not in the zoo; the message lists the choices."""


@dataclass
class LoadReport:
    """What happened when weights were loaded into a model."""

    source: str  # "imagenet", "none" or the weights file path (.pt/.pth/.pt2)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    replaced_head: bool = False  # the head is newly initialised (the file had none that fits)
    message: str = ""
    mismatched_keys: list[str] = field(default_factory=list)  # same name, other shape
    loaded_tensors: int = 0


def check_arch(arch: str) -> None:
    if arch not in ZOO:
        raise UnknownArchitectureError(
            f"Unknown architecture {arch!r}. Choose one of: {', '.join(ZOO)} "
            "(or 'custom' with a .pt2 backbone file)."
        )


def default_weights(arch: str) -> Any:
    """torchvision's default (best) ImageNet weights enum member for ``arch``."""
    check_arch(arch)
    return get_model_weights(arch).DEFAULT


# --------------------------------------------------------------------- ImageNet files
def weights_file_name(arch: str) -> str:
    return os.path.basename(urlparse(default_weights(arch).url).path)


def imagenet_weights_url(arch: str) -> str:
    """torchvision's URL, or the same file name on ``$FINETUNE_WEIGHTS_MIRROR``."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        return f"{mirror.rstrip('/')}/{weights_file_name(arch)}"
    return default_weights(arch).url


def checkpoint_dir() -> Path:
    """torch hub's checkpoint folder (honours $TORCH_HOME at call time)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_weights_path(arch: str) -> Path:
    return checkpoint_dir() / weights_file_name(arch)


def imagenet_weights_cached(arch: str) -> bool:
    """True when the ImageNet file for ``arch`` is already in torch hub's checkpoint dir."""
    return imagenet_weights_path(arch).is_file()


def download_file(
    url: str,
    dest: Path,
    progress: Progress | None = None,
    *,
    sha256_prefix: str | None = None,
    expected_size: int = 0,
    timeout: float = TIMEOUT_S,
) -> Path:
    """Download ``url`` to ``dest`` via a temp file in the same folder, then ``os.replace``.

    ``progress(done_bytes, total_bytes)`` is called after every chunk; ``total_bytes``
    is the server's Content-Length, else ``expected_size``, else 0. Raising inside
    ``progress`` cancels the download. Nothing is left at ``dest`` on failure.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or expected_size
            done = 0
            if progress:
                progress(0, total)
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix):
            raise WeightsError(
                f"The download of {dest.name} from {url} is corrupt (its SHA-256 does not "
                f"start with {sha256_prefix}). Try again, or put a good copy in {dest.parent}."
            )
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dest


def download_imagenet_weights(arch: str, progress: Progress | None = None) -> Path:
    """Download torchvision's ImageNet weights for ``arch`` into torch hub's checkpoint dir.

    Offline (or any network failure) raises WeightsError naming the file, the URL and
    the folder to copy it into by hand.
    """
    dest = imagenet_weights_path(arch)
    url = imagenet_weights_url(arch)
    match = HASH_IN_NAME.search(dest.name)
    meta_mb = default_weights(arch).meta.get("_file_size", 0)
    try:
        return download_file(
            url,
            dest,
            progress,
            sha256_prefix=match.group(1) if match else None,
            expected_size=int(meta_mb * 1024 * 1024),
        )
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        original = default_weights(arch).url
        where = url if url == original else f"{url} (or the original, {original})"
        raise WeightsError(
            f"Could not download the ImageNet weights for {arch} ({reason}). "
            f"This machine looks offline. Download {dest.name} from {where} on a machine with "
            f"internet access and copy it into {dest.parent} (that exact file name), then "
            "try again; or choose weights 'none' or a local weights file."
        ) from exc


# ------------------------------------------------------------------- state_dict files
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from a .pt/.pth file, safely; unwrap common checkpoint layouts."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights only load failed" in str(exc).lower():
            raise WeightsError(
                f"{path.name} contains Python objects besides tensors, and loading it would "
                "run code from the file, so it was not loaded. Save only the weights: "
                "torch.save(model.state_dict(), path)."
            ) from exc
        raise WeightsError(
            f"{path.name} is not a readable PyTorch checkpoint (it may be truncated or "
            f"another kind of file): {type(exc).__name__}: {str(exc)[:200]}"
        ) from exc
    state = _unwrap(obj)
    if state is None:
        raise WeightsError(
            f"{path.name} holds no state_dict: expected a dict of tensors, or a dict with one "
            f"under {', '.join(repr(k) for k in STATE_DICT_KEYS)}."
        )
    return state


def _unwrap(obj: Any) -> dict[str, torch.Tensor] | None:
    if not isinstance(obj, dict):
        return None
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)}
    if tensors and len(tensors) >= len(obj) / 2:
        return {_strip(k): v for k, v in tensors.items()}
    for key in STATE_DICT_KEYS:
        if key in obj:
            inner = _unwrap(obj[key])
            if inner:
                return inner
    return None


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def apply_state_dict(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    arch: str,
    source: str,
    label: str | None = None,
) -> LoadReport:
    """Load ``state`` (torchvision or Classifier keys) into a Classifier, reporting gaps.

    A head of another size is left newly initialised (``replaced_head``); a file saved
    from another architecture raises WeightsError (see :func:`plan_state_dict`). ``label``
    names the file in messages (default: ``source``).
    """
    label = label or source
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = best_key_layout(state, arch, target)
    if family_of(arch).fixed_size:
        state = resize_vit_positions(state, target, model)
    plan = plan_state_dict(state, arch, target, label)
    usable = plan.usable
    head_keys = ("head.1.weight", "head.1.bias")
    replaced_head = not all(k in usable for k in head_keys)
    if replaced_head:  # a partial head is worse than a fresh one
        for k in head_keys:
            usable.pop(k, None)
    model.load_state_dict(usable, strict=False)
    # The head is expected to be new when the file has another one; report only real gaps.
    missing = [k for k in plan.missing if k not in head_keys]
    mismatched_body = [k for k in plan.mismatched if k not in head_keys]
    parts = [f"Loaded {plan.matched} of {plan.total} backbone tensors from {label}."]
    if replaced_head:
        parts.append(_new_head_note(state, target))
    if missing:
        parts.append(f"Missing in the file ({len(missing)}): {short_list(missing)}.")
    if mismatched_body:
        parts.append(
            f"Other shape in the file ({len(mismatched_body)}): {short_list(mismatched_body)}."
        )
    if plan.unexpected:
        parts.append(f"Not used ({len(plan.unexpected)}): {short_list(plan.unexpected)}.")
    return LoadReport(
        source=source,
        missing_keys=missing,
        unexpected_keys=plan.unexpected,
        replaced_head=replaced_head,
        message=" ".join(parts),
        mismatched_keys=mismatched_body,
        loaded_tensors=len(usable),
    )


def _new_head_note(state: dict[str, torch.Tensor], target: Shapes) -> str:
    file_head = state.get("head.1.weight")
    if file_head is None:
        return "New head (the file has none)."
    return (
        f"New head for {target['head.1.weight'][0]} classes "
        f"(the file's head has {file_head.shape[0]} outputs)."
    )


# ------------------------------------------------------------------- .pt2 backbones
REEXPORT_HINT = (
    "Re-export it so that it maps (N, 3, H, W) normalised images to (N, D) features with a "
    "dynamic batch: torch.export.save(torch.export.export(model.eval(), (torch.randn(2, 3, S, S),), "
    'dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}), "backbone.pt2") '
    "(use your forward argument's name instead of x)."
)


def load_exported_backbone(path: str | Path, image_size: int) -> tuple[ExportedBackbone, int]:
    """Load and validate a .pt2 feature extractor; return it (frozen) and its feature size D."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Backbone file {path} does not exist.")
    try:
        program = load_program(path)
    except UnsafeProgramError as exc:
        raise WeightsError(str(exc)) from exc
    except Exception as exc:
        raise WeightsError(
            f"{path.name} is not a torch.export program (it may be truncated or another kind of "
            f"file): {type(exc).__name__}: {str(exc)[:200]}. {REEXPORT_HINT}"
        ) from exc
    _check_input_spec(program, path.name, image_size)
    net = program.module()
    dims = []
    for batch in (1, 2):
        x = torch.randn(batch, 3, image_size, image_size)
        try:
            with torch.no_grad():
                out = net(x)
        except Exception as exc:
            raise WeightsError(
                f"{path.name} failed on a batch of {batch} image(s) of {image_size}x{image_size}: "
                f"{str(exc)[:200]}. {REEXPORT_HINT}"
            ) from exc
        if not torch.is_tensor(out) or out.dim() != 2 or out.shape[0] != batch:
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise WeightsError(
                f"{path.name} returned {shape} for a batch of {batch}; a backbone must return "
                f"one feature vector per image, shape (N, D) (flatten or pool the features "
                f"before exporting). {REEXPORT_HINT}"
            )
        if not torch.isfinite(out).all():
            raise WeightsError(f"{path.name} returned NaN or infinite features.")
        dims.append(out.shape[1])
    if dims[0] != dims[1]:
        raise WeightsError(f"{path.name} returned {dims[0]} and {dims[1]} features per image.")
    return ExportedBackbone(net, str(path)), int(dims[0])


def _check_input_spec(program: Any, name: str, image_size: int) -> None:
    """Refuse a static batch dimension or another image size before running anything."""
    inputs = set(program.graph_signature.user_inputs)
    shapes = [
        n.meta["val"].shape
        for n in program.graph.nodes
        if n.op == "placeholder" and n.name in inputs and hasattr(n.meta.get("val"), "shape")
    ]
    if len(inputs) != 1 or len(shapes) != 1:
        raise WeightsError(f"{name} takes {len(inputs)} inputs; a backbone takes one image batch.")
    shape = shapes[0]
    if len(shape) != 4:
        raise WeightsError(f"{name} takes a {len(shape)}-D input; a backbone takes (N, 3, H, W).")
    if isinstance(shape[1], int) and shape[1] != 3:
        raise WeightsError(f"{name} takes {shape[1]} input channels; a backbone takes 3 (RGB).")
    if isinstance(shape[0], int):
        raise WeightsError(
            f"{name} was exported with a fixed batch size of {shape[0]} (no torch.export.Dim for "
            f"the batch dimension), so it cannot run other batch sizes. {REEXPORT_HINT}"
        )
    fixed_hw = [d for d in shape[2:] if isinstance(d, int)]
    if len(fixed_hw) == 2 and tuple(fixed_hw) != (image_size, image_size):
        raise WeightsError(
            f"{name} was exported for {fixed_hw[0]}x{fixed_hw[1]} images but the image size is "
            f"{image_size}. Set the image size to {fixed_hw[0]}, or re-export at {image_size}."
        )
