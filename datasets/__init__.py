"""Datasets floor: sources, splits (train pool / held-out / test), forget requests, device-resident data."""

from . import sources as _sources  # noqa: F401  (registers the sources)
from .base import DatasetError, ImageSet, SourceData, list_sources, register_source, source_info
from .device import TensorData, apply_augment, random_crop_flip
from .requests import ForgetSplit, build_request, list_requests, register_request, request_label
from .splits import DatasetSpec, Splits, build_splits, hash_indices

__all__ = [
    "DatasetError", "DatasetSpec", "ForgetSplit", "ImageSet", "SourceData", "Splits", "TensorData",
    "apply_augment", "build_request", "build_splits", "hash_indices", "list_requests", "list_sources",
    "random_crop_flip", "register_request", "register_source", "request_label", "source_info",
]
