"""Labelling a dataset from a few examples: COCO keypoints in (``coco``), fused transfers (``fuse``), COCO out
(``label``), drawings to review them (``preview``)."""

from .coco import Category, Reference, References, flip_permutation, read_references
from .fuse import Fused, candidate_weights, fuse_candidates
from .label import LabelSettings, check_labels_output, label_keypoints, write_labels
from .preview import preview_labels

__all__ = [
    "Category",
    "Reference",
    "References",
    "flip_permutation",
    "read_references",
    "Fused",
    "candidate_weights",
    "fuse_candidates",
    "LabelSettings",
    "check_labels_output",
    "label_keypoints",
    "write_labels",
    "preview_labels",
]
