"""What a run sets up before it starts: logging to console + file, seeding, the device."""
from __future__ import annotations

import logging
import os
import random
import sys

import numpy as np
import torch

from utils.errors import ResultsError


def setup_logger(name: str, log_file: str | None = None, rank: int = 0) -> logging.Logger:
    """A logger that writes to stdout and (rank 0 only) to ``log_file``, appending."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if log_file and rank == 0:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            fh = logging.FileHandler(log_file)
        except OSError as e:
            raise ResultsError(f"cannot write the log file {log_file}: {e.strerror or e}") from None
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str, logger: logging.Logger | None = None) -> torch.device:
    """``cuda`` falls back to CPU with a warning when no GPU is visible."""
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        if logger:
            logger.warning("device '%s' requested but CUDA is not available: using CPU", name)
        return torch.device("cpu")
    return torch.device(name)
