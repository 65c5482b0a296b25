"""The demo dataset: offline, deterministic, a real visual signal with noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune_core.data import create_demo_dataset, make_demo_folder
from finetune_core.store import Workspace


def load_folder(root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    classes = sorted(p.name for p in root.iterdir())
    images, labels = [], []
    for k, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            images.append(np.asarray(Image.open(path), dtype=np.float32) / 255)
            labels.append(k)
    return np.stack(images), np.array(labels), classes


def nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    train = np.arange(len(labels)) % 2 == 0
    centroids = np.stack([features[train & (labels == k)].mean(0) for k in np.unique(labels)])
    dist = ((features[~train][:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((dist.argmin(1) == labels[~train]).mean())


def test_demo_folder_is_deterministic(tmp_path: Path):
    a = make_demo_folder(tmp_path / "a", classes=4, per_class=5, size=32)
    b = make_demo_folder(tmp_path / "b", classes=4, per_class=5, size=32)
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.jpg"))
    assert files_a == sorted(p.relative_to(b).as_posix() for p in b.rglob("*.jpg"))
    classes = sorted({f.split("/")[0] for f in files_a})
    assert len(files_a) == 20 and classes == ["circle", "cross", "square", "triangle"]
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    c = make_demo_folder(tmp_path / "c", classes=4, per_class=5, size=32, seed=1)
    assert (c / files_a[0]).read_bytes() != (a / files_a[0]).read_bytes()
    assert len({(a / f).read_bytes() for f in files_a}) == 20  # no two images alike
    with Image.open(a / files_a[0]) as img:
        assert img.size == (32, 32) and img.mode == "RGB"
    with pytest.raises(ValueError):
        make_demo_folder(tmp_path / "d", classes=1)


def test_no_single_pixel_or_mean_colour_gives_the_class_away(tmp_path: Path):
    x, y, _ = load_folder(make_demo_folder(tmp_path, classes=3, per_class=40, size=32))
    assert nearest_centroid_accuracy(x.mean(axis=(1, 2)), y) < 0.6  # chance is 0.33
    assert nearest_centroid_accuracy(x[:, 2, 2, :], y) < 0.6
    assert x.std(axis=0).mean() > 0.15  # images vary a lot within the set


@pytest.mark.slow
def test_a_tiny_cnn_learns_it_far_above_chance(tmp_path: Path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    x, y, _ = load_folder(make_demo_folder(tmp_path, classes=3, per_class=60, size=32))
    images = torch.tensor(x).permute(0, 3, 1, 2)
    images = (images - images.mean((1, 2, 3), keepdim=True)) / (
        images.std((1, 2, 3), keepdim=True) + 1e-3
    )
    labels = torch.tensor(y)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = order[:144], order[144:]

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)
        )

    net = nn.Sequential(
        block(3, 16),
        block(16, 32),
        block(32, 64),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 3),
    )
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(10):
        net.train()
        shuffled = train[torch.randperm(len(train))]
        for start in range(0, len(train), 16):
            batch = shuffled[start : start + 16]
            loss = nn.functional.cross_entropy(net(images[batch]), labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(images[test]).argmax(1) == labels[test]).float().mean().item()
    assert accuracy > 0.55, accuracy  # chance is 0.33


def test_create_demo_dataset(workspace: Workspace):
    ds = create_demo_dataset(workspace, per_class=8, size=32, creator="ana")
    assert ds.name == "demo" and ds.record.source_kind == "demo" and ds.record.creator == "ana"
    assert ds.class_names == ["circle", "square", "triangle"]
    assert ds.record.num_images == 24 and ds.health.findings == []
    assert ds.split_counts()["val"] == {"circle": 1, "square": 1, "triangle": 1}
    assert (
        create_demo_dataset(workspace, per_class=8, size=32).id == ds.id
    )  # same parameters: reused
    other = create_demo_dataset(workspace, per_class=6, size=32)
    assert other.id != ds.id and other.name == "demo-2"
    assert list(workspace.tmp_dir.iterdir()) == []
