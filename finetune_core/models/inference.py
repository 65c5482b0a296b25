"""THE forward pass that produces a checkpoint's numbers, and the numbers themselves.

Validation during training (which picks and scores the best checkpoint), evaluation,
predict and export verification all call :func:`run_fp32` / :func:`probabilities`:
full fp32 (``device.INFERENCE_PRECISION``), batches of ``INFERENCE_BATCH`` taken in
order, the model's weights in the standard memory layout. So the validation accuracy in
metrics.json is, to the bit on one device, the evaluation's accuracy of that checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from finetune_core import device as devices
from finetune_core.data.augment import normalize

INFERENCE_BATCH = 64


@torch.no_grad()
def run_fp32(
    fn: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    device: torch.device,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = INFERENCE_BATCH,
) -> torch.Tensor:
    """``fn`` over ``inputs`` in order, ``batch_size`` rows at a time, in full fp32;
    the outputs as one float32 tensor on the CPU."""
    out = []
    with devices.full_precision(device):
        for start in range(0, len(inputs), batch_size):
            xb = inputs[start : start + batch_size].to(device)
            out.append(fn(prepare(xb) if prepare is not None else xb).float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 0))


def probabilities(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
) -> np.ndarray:
    """Softmax probabilities (N, C), float32, of uint8 (N, 3, S, S) images."""
    mean, std = mean.to(device), std.to(device)
    logits = run_fp32(model, images, device, prepare=lambda x: normalize(x, mean, std))
    return softmax(logits)


def softmax(logits: torch.Tensor) -> np.ndarray:
    """Float32 softmax of CPU logits, as numpy (the one place probabilities are made)."""
    return torch.softmax(logits.float(), dim=1).numpy()


def log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class, in float64 with probabilities
    clipped at float64's eps: the val_loss of training and the log_loss of evaluation."""
    return float(-np.log(true_class_probs(y, probs)).mean())


def loss_sum(y: np.ndarray, probs: np.ndarray) -> float:
    """The sum behind :func:`log_loss` (to add up shares of a split across processes)."""
    return float(-np.log(true_class_probs(y, probs)).sum())


def true_class_probs(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    eps = np.finfo(np.float64).eps
    return np.clip(p[np.arange(len(y)), y], eps, 1 - eps)


def correct(y: np.ndarray, probs: np.ndarray) -> int:
    """How many top-1 predictions (first maximum on ties) are right."""
    return int((probs.argmax(axis=1) == y).sum())


@contextlib.contextmanager
def standard_layout(model: nn.Module) -> Iterator[None]:
    """The model's weights in the contiguous (NCHW) layout inside the block, as a freshly
    loaded checkpoint has them; a channels_last model is put back afterwards. Layouts
    pick different kernels, whose results differ in the last bits."""
    channels_last = any(
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
        and not p.is_contiguous()
        for p in model.parameters()
    )  # fmt: skip
    if not channels_last:
        yield
        return
    model.to(memory_format=torch.contiguous_format)
    try:
        yield
    finally:
        model.to(memory_format=torch.channels_last)
