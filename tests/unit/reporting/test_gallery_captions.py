"""Gallery captions name the file and where it came from; the default activation-map
images are the most informative mistakes, then the least confident correct predictions."""

from __future__ import annotations

import numpy as np

from finetune_core.reporting.gallery import cam_candidates, default_cam_paths, image_origin


def test_caption_names_the_uploaded_file_its_folder_and_split() -> None:
    sources = {"cat/ab12.jpg": "train/cat/IMG_0042.JPG", "dog/cd34.png": "dog.png"}
    origin = image_origin("cat/ab12.jpg", sources, "val")
    assert (origin.name, origin.folder, origin.split) == ("IMG_0042.JPG", "train/cat", "val")
    assert origin.text == "IMG_0042.JPG · val split · from train/cat/"
    assert image_origin("dog/cd34.png", sources, "test").text == "dog.png · test split"
    # A Windows-style source and an unknown path (falls back to the dataset path).
    assert image_origin("x.jpg", {"x.jpg": "holiday\\beach\\x.jpg"}).where == "from holiday/beach/"
    assert image_origin("bird/ef.jpg", {}, "val").text == "ef.jpg · val split · from bird/"


def pred(path: str, true: str, pred_: str, prob: float) -> dict:
    return {"path": path, "true": true, "pred": pred_, "prob_pred": prob,
            "probs": np.array([prob, 1 - prob])}  # fmt: skip


PREDS = [
    pred("w-low", "cat", "dog", 0.55),
    pred("r-high", "cat", "cat", 0.99),
    pred("w-high", "dog", "cat", 0.97),
    pred("r-low", "dog", "dog", 0.51),
    pred("w-mid", "cat", "dog", 0.80),
    pred("r-mid", "cat", "cat", 0.70),
]


def test_cam_candidates_most_confident_mistakes_then_least_confident_right() -> None:
    order = [p["path"] for p in cam_candidates(PREDS)]
    assert order == ["w-high", "w-mid", "w-low", "r-low", "r-mid", "r-high"]


def test_default_cam_images_mix_mistakes_and_doubtful_right_ones() -> None:
    assert default_cam_paths(PREDS) == ["w-high", "w-mid", "w-low", "r-low"]
    assert default_cam_paths(PREDS, count=4, mistakes=2) == ["w-high", "w-mid", "r-low", "r-mid"]
    right_only = [p for p in PREDS if p["path"].startswith("r")]
    assert default_cam_paths(right_only) == ["r-low", "r-mid", "r-high"]
    wrong_only = [p for p in PREDS if p["path"].startswith("w")]
    assert default_cam_paths(wrong_only, count=2) == ["w-high", "w-mid"]
    assert default_cam_paths([]) == []
