"""Data loading: JSON indices -> audio + 51-dim FLAME motion at 25 fps (see docs/ARCHITECTURE.md)."""
from dataset.audio import load_audio, normalize_audio
from dataset.data_item import SampleRef, load_item
from dataset.dataset import FaceDataset, collate
from dataset.flame_files import load_flame_params
from dataset.flame_params import load_motion, load_shape, resample_motion
from dataset.index import read_index
from dataset.split_check import check_split
from dataset.styles import style_classes
from utils.errors import DataError

__all__ = ["DataError", "SampleRef", "load_audio", "load_flame_params", "load_item", "load_motion",
           "load_shape", "normalize_audio", "resample_motion", "FaceDataset", "collate", "read_index",
           "style_classes", "check_split"]
