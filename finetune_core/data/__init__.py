"""Data layer: ingest (zip, folders, CSV, uploads, server paths), health report,
stratified split, fingerprint, the dataset reader and the demo dataset.

The decoded-image cache and augmentation live in ``cache.py`` and ``augment.py``.
"""

from finetune_core.data.archive import IngestLimits
from finetune_core.data.dataset import Dataset, load_dataset
from finetune_core.data.demo import create_demo_dataset, make_demo_folder
from finetune_core.data.errors import DatasetNotFound, IngestError
from finetune_core.data.fingerprint import dataset_fingerprint
from finetune_core.data.health import Finding, HealthReport
from finetune_core.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageInfo,
    ImageReadError,
    open_rgb,
    probe_image,
    to_rgb,
)
from finetune_core.data.manifest import ManifestRow
from finetune_core.data.pipeline import IngestResult, ingest
from finetune_core.data.sources import CsvSource, ServerPath, UploadedFile
from finetune_core.data.split import SplitSpec

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "CsvSource",
    "Dataset",
    "DatasetNotFound",
    "Finding",
    "HealthReport",
    "ImageInfo",
    "ImageReadError",
    "IngestError",
    "IngestLimits",
    "IngestResult",
    "ManifestRow",
    "ServerPath",
    "SplitSpec",
    "UploadedFile",
    "create_demo_dataset",
    "dataset_fingerprint",
    "ingest",
    "load_dataset",
    "make_demo_folder",
    "open_rgb",
    "probe_image",
    "to_rgb",
]
