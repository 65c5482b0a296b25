"""Setting up a run before the loop: seeds, threads, device, the model (from its weights,
or from another run's checkpoint: ``init_from``), the decoded data and the batch size, and
the record of the environment and lineage it all ran in (run.json).
Functions of the Trainer they set up, kept apart from the loop."""

from __future__ import annotations

import hashlib
import platform
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torchvision

import finetune_core
from finetune_core import device as devices
from finetune_core import runs
from finetune_core.data.cache import decoded_split
from finetune_core.models.checkpoint import (
    CheckpointError,
    InitSource,
    checkpoint_val_accuracy,
    load_init_checkpoint,
    resolve_init_from,
    state_mismatch,
)
from finetune_core.models.classifier import CUSTOM, build_classifier
from finetune_core.training import ddp
from finetune_core.training.callbacks import TrainingError
from finetune_core.training.phases import MIN_BATCH_SIZE

AUTO_BATCH_CPU = 32
AUTO_BATCH_GPU_START = 512


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(t: Any) -> None:
    cfg = t.cfg
    seed_everything(cfg.seed)
    devices.set_threads(ddp.threads_per_rank(cfg.num_threads, t.dist))
    t.device = ddp.rank_device(devices.resolve_device(cfg.device), t.dist)
    t.amp_dtype = devices.resolve_precision(cfg.mixed_precision, t.device)
    if t.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick kernels
    if t.persist and t.dist.is_main:  # before the weights load, so failed runs have it too
        runs.update_info(t.paths, environment=environment(t))
    t.class_names = list(t.dataset.class_names)
    init = init_checkpoint(t)
    t.model, report = build_classifier(
        cfg.model,
        len(t.class_names),
        model_weights(t),
        dropout=cfg.dropout,
        image_size=cfg.image_size,
        progress=lambda done, total: t.setup_progress("downloading weights", done, total),
    )
    if init is not None:
        load_initial_state(t, init)
    elif report.message:
        t.log(report.message)
    t.model.to(t.device)
    if cfg.channels_last and t.device.type != "mps":
        t.model.to(memory_format=torch.channels_last)
    t.mean = torch.tensor(t.model.mean, device=t.device)
    t.std = torch.tensor(t.model.std, device=t.device)
    t.groups = t.model.param_groups()
    t.log(
        f"model {cfg.model} ({sum(p.numel() for p in t.model.parameters()) / 1e6:.1f}M "
        f"params) on {t.device}, precision {t.amp_dtype or 'fp32'}, "
        f"{len(t.groups)} groups"
    )


def init_checkpoint(t: Any) -> dict[str, Any] | None:
    """The checkpoint ``init_from`` names, checked to fit this run's model and classes
    (TrainingError with what differs otherwise); None without ``init_from``, and when
    resuming from the run's own last checkpoint (which holds the lineage)."""
    cfg = t.cfg
    if not cfg.init_from or (t.resume and t.paths.checkpoint("last").exists()):
        return None
    # The dataset knows its workspace, where a run id resolves (dashboard and CLI runs).
    workspace = getattr(t.dataset, "workspace", None)
    try:
        source = resolve_init_from(cfg.init_from, workspace)
        if source.folder.resolve() == t.paths.root.resolve():
            raise CheckpointError(
                "A run cannot start from its own checkpoints: give another run, or resume it."
            )
        ckpt = load_init_checkpoint(source, cfg.model, t.class_names)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from exc
    t.init_source = source
    record_lineage(t, lineage_of(source, ckpt))
    return ckpt


def lineage_of(source: InitSource, ckpt: dict[str, Any]) -> dict[str, Any]:
    """What run.json records about the weights a run started from."""
    return {
        "source_run_id": source.run_id,
        "source_folder": str(source.folder),
        "checkpoint": source.which,
        "epoch": int(ckpt.get("epoch") or 0),
        "val_accuracy": checkpoint_val_accuracy(ckpt),
    }


def record_lineage(t: Any, lineage: dict[str, Any] | None) -> None:
    """Keep the lineage on the trainer (checkpoints carry it) and in run.json."""
    t.lineage = lineage
    if lineage and t.persist and t.dist.is_main:
        runs.update_info(t.paths, lineage=lineage)


def model_weights(t: Any) -> str:
    """The weights build_classifier loads. With ``init_from`` every tensor comes from the
    source checkpoint, so none (no ImageNet download); a custom model still needs its
    .pt2 backbone: the run's own copy, the configured file, else the source run's."""
    cfg = t.cfg
    if not cfg.init_from:
        return own_weights(t, cfg.weights) if t.persist else cfg.weights
    if cfg.model != CUSTOM:
        return "none"
    weights = own_weights(t, cfg.weights) if t.persist else cfg.weights
    source = getattr(t, "init_source", None)
    if not Path(weights).is_file() and source is not None:
        backbone = str(runs.RunPaths(source.folder).backbone)
        weights = own_weights(t, backbone) if t.persist else backbone
    return weights


def load_initial_state(t: Any, ckpt: dict[str, Any]) -> None:
    """Load the source checkpoint into the freshly built model, backbone and head."""
    source: InitSource = t.init_source
    state = ckpt["model_state"]
    problems = state_mismatch(state, t.model.state_dict())
    if problems:
        size = ckpt.get("image_size")
        hint = (
            f" It was trained at {size} px: use that image size."
            if size and int(size) != t.cfg.image_size
            else ""
        )
        raise TrainingError(
            f"Cannot start from {source.label}: its weights do not fit this model "
            f"({'; '.join(problems[:4])}{'; …' if len(problems) > 4 else ''}).{hint}"
        )
    t.model.load_state_dict(state)
    # The model holds a checkpoint's weights (a probe's head with the feature scaling
    # folded in: the probe phase unfolds it), without an optimizer state to restore.
    t.resumed_from = {"init_from": t.cfg.init_from}
    va = t.lineage.get("val_accuracy") if t.lineage else None
    t.log(
        f"initialised from {source.label}: its {source.which} checkpoint (epoch "
        f"{ckpt.get('epoch')}" + (f", val accuracy {va:.4f})" if va is not None else ")")
    )


def separate_feature_cache(t: Any) -> None:
    """Warm-started probes extract features with the source's backbone, which the
    feature cache's key (model, weights, seed) does not name: they cache under a folder
    of their own, keyed by the backbone's tensors (the same after a resume)."""
    if not t.cfg.init_from or t.cfg.strategy != "probe":
        return
    h = hashlib.sha256()
    for name, tensor in t.model.backbone.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    t.cache_dir = t.cache_dir / "warm-start" / h.hexdigest()[:16]


def own_weights(t: Any, weights: str) -> str:
    """The run's own copy of a weights file (a .pt2 backbone or a state_dict), so that
    evaluation, export, resume and the recorded command never depend on the upload."""
    local = t.paths.own_weights(weights)
    if local is None:
        return weights
    source = Path(weights)
    if source.is_file() and source.resolve() != local.resolve():
        shutil.copyfile(source, local)
    # An upload that has vanished since (resume) is fine once the run has its copy; with
    # neither, build_classifier says which file is missing.
    return str(local) if local.is_file() else weights


def environment(t: Any) -> dict[str, Any]:
    """What the numbers depend on beyond config and data: versions, threads, hardware."""
    commit, dirty = git_state(Path(finetune_core.__file__).resolve().parent.parent)
    return {
        "finetune_dashboard": finetune_core.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),  # what set_threads gave us, never 0
        "processes": t.dist.world_size,
        "device": str(t.device),
        "gpu": torch.cuda.get_device_name(t.device) if t.device.type == "cuda" else None,
        "cuda": torch.version.cuda if t.device.type == "cuda" else None,
    }


def git_state(source: Path) -> tuple[str | None, bool | None]:
    """(commit, has uncommitted changes) of the product's source tree when it is a git
    checkout; (None, None) otherwise (an installed package, no git): never fails."""
    if not (source / ".git").exists():
        return None, None
    try:
        head = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if head.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return head.stdout.strip() or None, dirty


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_data(t: Any) -> None:
    size = t.cfg.image_size
    t.train_data = decoded_split(
        t.dataset, "train", size, t.cache_dir,
        progress=lambda d, n: t.setup_progress("decoding train images", d, n),
    )  # fmt: skip
    t.val_data = decoded_split(
        t.dataset, "val", size, t.cache_dir,
        progress=lambda d, n: t.setup_progress("decoding validation images", d, n),
    )  # fmt: skip
    if len(t.train_data) == 0:
        raise TrainingError("The dataset has no training images; add images or re-split it.")
    if len(t.val_data) == 0:
        t.log("warning: no validation images; the best epoch is chosen by training loss")
    if t.device.type == "cuda":
        move_cache_to_gpu(t)
    t.class_counts = torch.bincount(t.train_data.labels.cpu(), minlength=len(t.class_names)).float()
    t.class_weights = criterion_weights(t)
    t.log(f"cached {len(t.train_data)} train and {len(t.val_data)} val images at {size}px")


def move_cache_to_gpu(t: Any) -> None:
    """Keep the uint8 cache on the GPU when it fits easily: no host-to-device copy per batch."""
    free, _ = torch.cuda.mem_get_info(t.device)
    for data in (t.train_data, t.val_data):
        if data.images.numel() < 0.25 * free:
            data.images = data.images.to(t.device)
            data.labels = data.labels.to(t.device)
        elif not data.memory_mapped:
            data.images = data.images.pin_memory()


def criterion_weights(t: Any) -> torch.Tensor | None:
    if t.cfg.class_balance != "weighted_loss":
        return None
    counts = t.class_counts.clamp(min=1)
    return (counts.sum() / (len(counts) * counts)).to(t.device)


def initial_batch_size(t: Any) -> int:
    bs = t.cfg.batch_size
    if bs == "auto":
        # On a GPU start big and let the OOM handler halve; on CPU larger batches do not
        # run faster, they only cost memory.
        bs = AUTO_BATCH_GPU_START if t.device.type == "cuda" else AUTO_BATCH_CPU
    bs = max(1, min(int(bs), len(t.train_data)))
    if t.dist.enabled and bs < MIN_BATCH_SIZE * t.dist.world_size:
        raise TrainingError(
            f"The batch of {bs} is split across {t.dist.world_size} processes and each "
            f"needs at least {MIN_BATCH_SIZE} images: use a larger batch (and dataset) or "
            "fewer devices."
        )
    return bs
