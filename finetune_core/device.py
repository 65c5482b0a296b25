"""Device and precision choices, and a description of the hardware for the UI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch

from finetune_core.resources import available_cores


@dataclass(frozen=True)
class DeviceInfo:
    """What the dashboard shows about where training runs."""

    kind: str  # cpu | cuda | mps
    name: str
    cores: int
    memory_gb: float | None
    bf16: bool


def resolve_device(requested: str = "auto") -> torch.device:
    """Map a config value (auto, cpu, cuda, cuda:N, mps) to an available device."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"The run asks for {requested}, but no CUDA GPU is visible here; choose device=auto or cpu."
        )
    if (
        device.type == "cuda"
        and device.index is not None
        and device.index >= torch.cuda.device_count()
    ):
        raise RuntimeError(
            f"The run asks for {requested}, but only {torch.cuda.device_count()} GPU(s) are visible."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("The run asks for mps, but Apple's Metal backend is not available here.")
    return device


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a config value; None means full fp32.

    ``auto`` picks bf16 on GPUs that have it (fp16 otherwise) and on CPUs with native
    bf16 kernels, where it was measured to roughly double throughput (benchmarks/RESULTS.md).
    """
    if requested == "off":
        return None
    if requested == "bf16":
        return torch.bfloat16
    if requested == "fp16":
        return torch.float16 if device.type != "cpu" else torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# The precision every figure of a checkpoint is computed in: validation (which picks and
# scores the best checkpoint), evaluation, predict and the exports. Training steps may
# use mixed precision (RunConfig.mixed_precision); the numbers a user reads never do.
INFERENCE_PRECISION = "fp32"
_PRECISION_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def precision_name(dtype: torch.dtype | None) -> str:
    """bf16, fp16 or fp32 (no autocast) for an autocast dtype."""
    return _PRECISION_NAMES.get(dtype, "fp32") if dtype is not None else "fp32"


@contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Plain fp32 on ``device``: autocast off (even inside an autocast block) and, on
    CUDA, no TF32 in convolutions or matmuls (cuDNN uses TF32 by default)."""
    with torch.autocast(device_type=device.type, enabled=False):
        if device.type != "cuda":
            yield
            return
        cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def set_threads(num_threads: int) -> int:
    """Use ``num_threads`` intra-op threads (0 = every core); returns the number used."""
    n = num_threads or available_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def device_info() -> DeviceInfo:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return DeviceInfo(
            kind="cuda",
            name=f"{props.name} (x{torch.cuda.device_count()})",
            cores=os.cpu_count() or 1,
            memory_gb=round(props.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
        )
    mem = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return DeviceInfo(
        kind="cpu",
        name=f"CPU, {os.cpu_count()} cores",
        cores=os.cpu_count() or 1,
        memory_gb=mem,
        bf16=cpu_supports_bf16(),
    )


def memory_in_use_mb(device: torch.device) -> float | None:
    """Device memory in use (MB) for the live view: CUDA allocator, or the process RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        with open("/proc/self/statm") as handle:
            rss_pages = int(handle.read().split()[1])
        return rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


# CPU allocator failures are plain RuntimeErrors ("DefaultCPUAllocator: can't allocate
# memory"); MPS says "out of memory"; numpy and Python raise MemoryError.
_OOM_TEXT = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "not enough memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(t in text for t in _OOM_TEXT)


def free_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
