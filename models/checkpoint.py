"""Checkpoints are data, not code: the format, atomic save, safe and validated load (the command that
converts older checkpoints is main/checkpoint.py).

Format: a dict saved by ``torch.save`` that holds only tensors and plain Python values (dict, list,
tuple, str, int, float, bool, None), so ``torch.load(weights_only=True)`` reads it with torch's
default allow-list and no ``add_safe_globals`` (torch 2.4+)::

    model      {name: tensor}               the FaceFormer state dict
    styles     [str]                        style class names, in class order
    config     {section: {key: value}}      the resolved config (Config.to_dict())
    audio_encoder_config  {key: value}      the wav2vec2 config (plain values, ``plain_values``), so
                                            inference builds the encoder without transformers
                                            (models/wav2vec2_runtime.py); absent in older checkpoints
    epoch, step, best_val                   training progress (last.pth, best_model.pth)
    optimizer, scaler                       their state dicts (training only)

(No RNG state: training reseeds every epoch from TRAIN.seed, see main/train_eval_loop.py.)
Anything else in the pickle (a class, a function: what a crafted file needs to run code) is refused
before it is called. Checkpoints written before this format held the numpy RNG state as a numpy
array; ``python main/checkpoint.py convert OLD.pth [NEW.pth]`` rewrites one without it (still without
running code: only numpy's array reconstruction is allowed for that one load) and adds the wav2vec2
config to checkpoints written before it was saved (built once through transformers).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re

import numpy as np
import torch

from utils.atomic import atomic_write, tmp_sibling
from utils.errors import CheckpointError

CONVERT_HINT = "python main/checkpoint.py convert {path}"


# ----------------------------------------------------------------------------------------------
# Save
# ----------------------------------------------------------------------------------------------

def save_checkpoint(state: dict, path: str):
    """torch.save through a temporary file beside ``path`` and a rename (utils/atomic.py): a kill or a
    full disk never leaves a torn checkpoint, and the previous one stays intact until the new one is
    whole. The file gets the user's umask. A failed write -> CheckpointError naming the file."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(state, tmp), umask_mode=True)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e} (the previous checkpoint, "
                              f"if any, is unchanged)") from None
    except RuntimeError as e:  # torch.save reports a failed write of its zip archive as RuntimeError
        raise CheckpointError(f"cannot write checkpoint {path}: {str(e).splitlines()[0]} (disk full?); the "
                              f"previous checkpoint, if any, is unchanged") from None


def plain_values(config: dict) -> dict:
    """A config dict kept to plain values (str, int, float, bool, None, and lists / dicts of them), so
    a checkpoint holding it loads with ``torch.load(weights_only=True)``; other entries are dropped."""
    def plain(v):
        if v is None or isinstance(v, (str, int, float, bool)):
            return True
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        return isinstance(v, dict) and all(isinstance(k, (str, int)) and plain(x) for k, x in v.items())

    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if isinstance(k, str) and plain(v)}


# ----------------------------------------------------------------------------------------------
# Load
# ----------------------------------------------------------------------------------------------

def load_checkpoint(path: str, what: str = "checkpoint", mmap: bool = False) -> dict:
    """``torch.load(weights_only=True)`` of a file of ours -> its dict, or CheckpointError naming the file
    (missing, truncated/corrupt, objects outside the allow-list, not our layout). Nothing in the file
    is ever called: the restricted unpickler refuses a global before it is looked up.
    ``mmap=True`` maps the tensors from the file instead of reading them into memory: inference copies
    them into the model once, so the weights are not held twice at the peak."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        if m is None:  # not a pickle at all (a text file, random bytes): nothing was refused
            raise CheckpointError(f"{what} {path} is not a checkpoint, or is truncated or corrupt "
                                  f"({_first_line(e, path)}); use another copy or retrain") from None
        name = m.group(1)
        if name.startswith("numpy."):
            raise CheckpointError(
                f"{what} {path} was written in the old format (a numpy RNG state inside, {name}); convert it "
                f"once with: {CONVERT_HINT.format(path=path)}") from None
        raise CheckpointError(
            f"{what} {path} refused: it contains objects outside the allow-list of checkpoint data "
            f"(tensors and plain values), here {name}; nothing in it was run. A checkpoint written by "
            f"python train.py never does: do not use this file") from None
    except Exception as e:  # torn zip, 0 bytes, not a torch file at all
        raise CheckpointError(f"{what} {path} is truncated or corrupt ({_first_line(e, path)}); use another copy or "
                              f"retrain") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{what} {path}: expected a dict written by python train.py, got "
                              f"{type(ckpt).__name__}")
    _check_layout(ckpt, path, what)
    return ckpt


def _check_layout(ckpt: dict, path: str, what: str):
    """The keys every checkpoint of ours has, with the right kinds of values."""
    problems = []
    if "model" not in ckpt or "styles" not in ckpt:
        problems.append(f"expected keys 'model' and 'styles', got {sorted(map(str, ckpt))}")
    else:
        model = ckpt["model"]
        if not isinstance(model, dict) or not all(isinstance(k, str) and torch.is_tensor(v)
                                                  for k, v in model.items()):
            problems.append("'model' must be a dict of parameter name -> tensor")
        styles = ckpt["styles"]
        if not isinstance(styles, (list, tuple)) or not styles or not all(isinstance(s, str) for s in styles):
            problems.append(f"'styles' must be a non-empty list of style names, got {styles!r:.80}")
    config = ckpt.get("config")
    if config is not None and not (isinstance(config, dict) and isinstance(config.get("MODEL", {}), dict)):
        problems.append("'config' must be a dict of config sections")
    encoder = ckpt.get("audio_encoder_config")
    if encoder is not None and not (isinstance(encoder, dict) and all(isinstance(k, str) for k in encoder)):
        problems.append("'audio_encoder_config' must be a dict of wav2vec2 config values")
    if problems:
        raise CheckpointError(f"{what} {path} is not a checkpoint of this project: " + "; ".join(problems))


def check_state_dict(state: dict, model: torch.nn.Module, path: str):
    """The weights fit the model: same parameter names and shapes, else CheckpointError naming the
    missing, unexpected and mismatched ones (first few of each)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    parts = [f"{label} ({len(xs)}): {', '.join(xs[:4])}{' ...' if len(xs) > 4 else ''}"
             for label, xs in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if xs]
    if parts:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the model built from its MODEL config: "
                              + "; ".join(parts))


def check_training_state(ckpt: dict, path: str):
    """What TRAIN.resume needs beyond the weights (last.pth), else CheckpointError naming the file."""
    need = {"optimizer": dict, "epoch": int, "step": int, "best_val": (int, float)}
    bad = [k for k, t in need.items() if not isinstance(ckpt.get(k), t)]
    if bad:
        raise CheckpointError(f"{path} cannot be resumed: missing or malformed {', '.join(bad)} (is it a "
                              f"best_model.pth or a file not written by python train.py? resume needs last.pth)")


# ----------------------------------------------------------------------------------------------
# Conversion of the old format
# ----------------------------------------------------------------------------------------------

def _numpy_rng_globals() -> list:
    """What torch.save of np.random.get_state() refers to: numpy's array reconstruction, no code."""
    core = getattr(np, "_core", None) or np.core
    names = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        names.append(type(np.dtype(np.uint32)))
    return names


@contextlib.contextmanager
def _allow_for_this_load(extra: list):
    """torch's weights_only allow-list extended for the block only, so that the process's later loads
    (and the check that the converted file loads without it) see the default list again:
    torch.serialization.safe_globals in torch >= 2.5, saved and restored by hand in 2.4."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    if scoped is not None:
        with scoped(extra):
            yield
        return
    before = list(torch.serialization.get_safe_globals())
    torch.serialization.add_safe_globals(extra)
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def convert_old_checkpoint(src: str, dst: str | None = None, also=None) -> str:
    """Rewrite a checkpoint of the old format (numpy RNG state) without it; returns the path.

    Everything is checked before ``dst`` is touched: the file must be a checkpoint of ours (a dict with
    the keys and kinds ``load_checkpoint`` checks), the rewritten file must load with the default
    allow-list, and ``also(path)`` (e.g. recording the wav2vec2 config) must succeed on it; it is
    written beside ``dst`` under a temporary name and renamed over ``dst`` last. Anything else ->
    CheckpointError naming ``src``, and no output."""
    if not os.path.isfile(src):
        raise CheckpointError(f"checkpoint not found: {src}")
    try:
        with _allow_for_this_load(_numpy_rng_globals()):
            ckpt = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # not a pickle at all, e.g. a text file
            raise CheckpointError(f"{src} is not a checkpoint ({_first_line(e, src)})") from None
        raise CheckpointError(f"{src} refused: it contains objects outside the allow-list even for the old "
                              f"format ({str(e).splitlines()[-3:]})") from None
    except Exception as e:  # torn zip, 0 bytes, a text file read as a legacy pickle
        raise CheckpointError(f"{src} is not a checkpoint, or is truncated or corrupt ({_first_line(e, src)})") \
            from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{src} is not a checkpoint of this project: it holds a {type(ckpt).__name__}, "
                              f"expected a dict written by python train.py; nothing was written")
    ckpt.pop("rng", None)  # training reseeds every epoch now: the old RNG state is not needed
    _check_layout(ckpt, src, "checkpoint")
    dst = dst or src
    tmp = tmp_sibling(dst)

    def write(path):
        save_checkpoint(ckpt, path)
        load_checkpoint(path)  # proves the result loads with the default allow-list
        if also is not None:
            also(path)
    try:
        atomic_write(dst, write)
    except CheckpointError as e:  # name the user's file, not the temporary one
        raise CheckpointError(str(e).replace(tmp, src) + ("" if "nothing was written" in str(e)
                                                          else "; nothing was written")) from None
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {dst}: {e.strerror or e}") from None
    return dst


def _first_line(e: Exception, path: str | None = None) -> str:
    """The reason torch.load gave, short; for a file that is not a torch file at all (a zip archive or
    a pickle), what it starts with instead, which says more than the unpickler's KeyError."""
    if path is not None:
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError:
            head = b"PK"
        if not head:
            return "the file is empty"
        if not head.startswith((b"PK", b"\x80")):
            return f"not a torch file: it starts with {head!r}"
    text = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
    return text[:160]
