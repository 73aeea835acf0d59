"""Small shared helpers: logging to console + file, seeding, atomic writes, device choice."""
from __future__ import annotations

import logging
import os
import random
import sys
import tempfile

import numpy as np
import torch


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
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_torch_save(obj, path: str):
    """torch.save to a temp file in the same folder, then rename: a crash never leaves a torn file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pth", dir=folder)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def pick_device(name: str, logger: logging.Logger | None = None) -> torch.device:
    """``cuda`` falls back to CPU with a warning when no GPU is visible."""
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        if logger:
            logger.warning("device '%s' requested but CUDA is not available: using CPU", name)
        return torch.device("cpu")
    return torch.device(name)


# Errors a user can cause (bad config key, bad or missing file, missing model weights, GL library):
# their message names the file/key and what was expected, so the traceback only hides it.
USER_ERROR_NAMES = {"ConfigError", "DataError", "FlameLoadError", "AudioEncoderLoadError", "InferenceError",
                    "EvalError", "RenderError"}


def run_reporting_user_errors(prog: str, main, argv=None):
    """``main(argv)``; a user error (a class named in USER_ERROR_NAMES, or a subclass) ends the
    program with ``prog: message`` and exit status 1 instead of a traceback."""
    try:
        return main(argv)
    except Exception as e:
        if any(c.__name__ in USER_ERROR_NAMES for c in type(e).__mro__):
            sys.exit(f"{prog}: {e}")
        raise
