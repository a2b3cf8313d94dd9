"""Data: readers for labelled files, the label map, batching with dynamic padding (lessons/10-data.md).

``minift/data/readers.py`` reads files into `Example`s and maps labels to ids; ``minift/data/collate.py``
turns a list of examples into padded tensors and builds the seeded DataLoader.
"""

from minift.data.collate import ClassificationCollate, make_classification_collate, make_loader
from minift.data.readers import DataError, Example, LabelMap, demo_path, read_classification, read_conll
from minift.data.sampler import EpochBatchSampler

__all__ = [
    "ClassificationCollate",
    "DataError",
    "EpochBatchSampler",
    "Example",
    "LabelMap",
    "demo_path",
    "make_classification_collate",
    "make_loader",
    "read_classification",
    "read_conll",
]
