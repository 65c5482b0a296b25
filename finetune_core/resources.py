"""What one run may take from the machine: CPU cores, memory, and the size of the caches
its config asks for.

The run process calls ``run_threads(cfg.num_threads, cores_for_run(slots))`` and
``apply_memory_limit(memory_limit_bytes())`` before training; the Setup page and the
trainer call ``cache_problems`` once the dataset's size is known. Nothing here imports
torch: the checks run before any heavy library starts its thread pools.
"""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Mapping

MEMORY_LIMIT_ENV = "FINETUNE_RUN_MEMORY_LIMIT"
# A Python process with torch loaded needs a few hundred MiB before it trains anything;
# a smaller limit could only fail, so it is refused as a mistake.
MIN_MEMORY_LIMIT = 256 * 2**20
# RLIMIT_DATA counts the private writable memory a process maps (heap and anonymous
# mmap, where malloc puts large blocks) since Linux 4.7. RLIMIT_AS also counts address
# space reserved and never used: measured on an H200 machine, CUDA failed to start under
# an 8 GiB RLIMIT_AS and ran under an 8 GiB RLIMIT_DATA, which still refused a 16 GiB
# CPU tensor (tests/unit/core/test_config_resources.py checks the CPU side in a subprocess).
MEMORY_RLIMIT = resource.RLIMIT_DATA
# Feature vectors a probe's cache may hold (train images x augmented views): about
# 8 GiB of float32 at 2,048 features each.
MAX_FEATURE_ROWS = 1_000_000
# Bytes of decoded uint8 images one run may cache (images x 3 x image_size^2).
MAX_IMAGE_CACHE_BYTES = 64 * 2**30

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


class ResourceError(ValueError):
    """A resource setting is not usable; the message says what to set instead."""


# ----------------------------------------------------------------------------- cores
def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and
    ``taskset`` narrow), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def cores_for_run(slots: int) -> int:
    """The cores one run may use when ``slots`` CPU runs share this machine (at least 1)."""
    return max(1, available_cores() // max(1, slots))


def run_threads(requested: int, allowed: int) -> tuple[int, str]:
    """The intra-op threads a run uses: ``requested`` (0 = every allowed core), never more
    than ``allowed``; with a note for the run log when the request was cut down."""
    allowed = max(1, allowed)
    if requested <= 0:
        return allowed, ""
    if requested > allowed:
        return allowed, (
            f"num_threads {requested} is more than the {allowed} cores this run may use: "
            f"using {allowed} threads."
        )
    return requested, ""


# ---------------------------------------------------------------------------- memory
def parse_size(text: str, what: str = MEMORY_LIMIT_ENV) -> int | None:
    """Bytes from a size such as ``8G``, ``512M``, ``1.5GiB`` or ``1073741824``; None for
    an empty value. Units are binary (1K = 1024 bytes)."""
    if not text.strip():
        return None
    match = _SIZE.match(text)
    if not match:
        raise ResourceError(
            f"{what} must be a size such as 8G or 512M, or empty for no limit (got {text[:40]!r})."
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def memory_limit_bytes(environ: Mapping[str, str] | None = None) -> int | None:
    """The per-run memory limit from ``FINETUNE_RUN_MEMORY_LIMIT`` (None: no limit)."""
    env = os.environ if environ is None else environ
    nbytes = parse_size(env.get(MEMORY_LIMIT_ENV, ""))
    if nbytes is not None and nbytes < MIN_MEMORY_LIMIT:
        raise ResourceError(
            f"{MEMORY_LIMIT_ENV} is {nbytes:,} bytes, too little for a training process: "
            "set at least 256M, or leave it empty for no limit."
        )
    return nbytes


def apply_memory_limit(nbytes: int | None) -> None:
    """Limit this process (and the children it starts later) to ``nbytes`` of memory: an
    allocation beyond it fails with MemoryError instead of the kernel's OOM killer
    choosing some process of the machine. None leaves the limit as it is."""
    if nbytes is None:
        return
    _, hard = resource.getrlimit(MEMORY_RLIMIT)
    if hard != resource.RLIM_INFINITY:
        nbytes = min(nbytes, hard)  # an unprivileged process cannot raise its hard limit
    resource.setrlimit(MEMORY_RLIMIT, (nbytes, hard))


# ---------------------------------------------------------------------------- caches
def image_cache_bytes(images: int, image_size: int) -> int:
    """Bytes of the decoded uint8 image cache: 3 channels of image_size^2 per image."""
    return images * 3 * image_size * image_size


def cache_problems(
    *, train_images: int, cached_images: int, image_size: int, views: int, probe: bool
) -> list[tuple[str, str]]:
    """(field to change, problem) for caches a config would make too large: the probe's
    feature cache (``train_images`` x ``views``; only for the probe strategy) and the
    decoded image cache (``cached_images``, train and validation, at ``image_size``)."""
    out: list[tuple[str, str]] = []
    if probe and train_images * views > MAX_FEATURE_ROWS:
        out.append(
            (
                "probe_views",
                f"{train_images:,} training images x {views} augmented views make "
                f"{train_images * views:,} cached feature vectors, more than the "
                f"{MAX_FEATURE_ROWS:,} allowed: choose fewer views per image.",
            )
        )
    images = cached_images
    cache = image_cache_bytes(images, image_size)
    if cache > MAX_IMAGE_CACHE_BYTES:
        out.append(
            (
                "image_size",
                f"{images:,} images at {image_size} px make a decoded image cache of "
                f"{cache / 2**30:,.0f} GiB, more than the {MAX_IMAGE_CACHE_BYTES / 2**30:.0f} "
                "GiB allowed: choose a smaller image size.",
            )
        )
    return out
