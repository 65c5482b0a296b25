"""The baseline: the plain PyTorch fine-tuning loop of the article the product grew from.

torchvision ``ImageFolder`` + ``DataLoader`` + ``Resize/ToTensor/Normalize``, SGD with
momentum 0.9 and lr 0.001, cross-entropy, every image decoded every epoch. Written
here from the article's description so benchmarks compare against the loop a user
would write by hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
import torchvision.transforms as T
from torch import nn


@dataclass
class SeedLoopResult:
    train_seconds: float
    images_per_second: float
    val_accuracy: float | None
    epochs: int


def build_seed_model(arch: str, num_classes: int, state_dict: dict | None = None) -> nn.Module:
    model = torchvision.models.get_model(arch, weights=None)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    # the article replaces the final layer (resnet's fc)
    if hasattr(model, "fc"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)
    return model


def seed_loop(
    train_dir: Path,
    val_dir: Path | None,
    *,
    arch: str = "resnet18",
    state_dict: dict | None = None,
    epochs: int = 1,
    batch_size: int = 32,
    image_size: int = 224,
    head_only: bool = False,
    device: str = "cpu",
    num_workers: int = 0,
    seed: int = 0,
    max_batches: int | None = None,
    warmup_batches: int = 1,
) -> SeedLoopResult:
    """Train like the article; ``head_only`` freezes everything but the new last layer.

    The first ``warmup_batches`` batches (CUDA/cuDNN start-up, worker start) are not timed.
    """
    torch.manual_seed(seed)
    transform = T.Compose(
        [
            T.Resize((image_size, image_size)),
            T.ToTensor(),
            T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    train_data = torchvision.datasets.ImageFolder(root=str(train_dir), transform=transform)
    loader = torch.utils.data.DataLoader(
        train_data, batch_size=batch_size, shuffle=True, num_workers=num_workers
    )
    model = build_seed_model(arch, len(train_data.classes), state_dict).to(device)
    if head_only:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(("fc.", "classifier.")))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    seen = 0
    start = time.perf_counter()
    step = 0
    for _ in range(epochs):
        model.train()
        for i, (inputs, labels) in enumerate(loader):
            if max_batches is not None and i >= max_batches + warmup_batches:
                break
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            _ = loss.item()  # the article's running_loss += loss.item()
            step += 1
            if step == warmup_batches:
                start, seen = time.perf_counter(), 0
            elif step > warmup_batches:
                seen += len(labels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    accuracy = None if val_dir is None else _accuracy(model, val_dir, transform, device)
    return SeedLoopResult(seconds, seen / seconds, accuracy, epochs)


def _accuracy(model: nn.Module, val_dir: Path, transform: T.Compose, device: str) -> float:
    """Top-1 accuracy on an ImageFolder, as the article measures it."""
    val_data = torchvision.datasets.ImageFolder(root=str(val_dir), transform=transform)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for inputs, labels in torch.utils.data.DataLoader(val_data, batch_size=64):
            pred = model(inputs.to(device)).argmax(1).cpu()
            correct += int((pred == labels).sum())
            total += len(labels)
    return correct / max(1, total)
