"""Data loading: JSON indices -> audio + 51-dim FLAME motion at 25 fps (see docs/ARCHITECTURE.md)."""
from dataset.data_item import (DataError, SampleRef, load_audio, load_flame_params, load_item,
                               load_motion, load_shape, normalize_audio, resample_motion)
from dataset.dataset import FaceDataset, collate, read_index, style_classes, validate

__all__ = ["DataError", "SampleRef", "load_audio", "load_flame_params", "load_item", "load_motion",
           "load_shape", "normalize_audio", "resample_motion", "FaceDataset", "collate", "read_index",
           "style_classes", "validate"]
