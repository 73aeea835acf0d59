"""YAML configuration: defaults, environment expansion, typed command-line overrides.

A config has five sections (DATA, MODEL, FLAME, TRAIN, INFER). Every valid key and its default is
in ``DEFAULTS`` below; a YAML file or an override that names any other key is an error that lists
the closest valid keys. ``DATA.datasets`` maps a dataset name to a dataset entry whose keys are
those of ``DATASET_DEFAULTS``.

Usage::

    cfg = load_config("config/demo.yaml", ["TRAIN.epochs=1", "DATA.datasets.MEAD_VHAP.fps=25"])
    cfg.TRAIN.epochs          # 1
    resolve_data_path(cfg, "dataset_jsons/x.json")   # joined to DATA.data_root unless absolute
"""
from __future__ import annotations

import copy
import difflib
import os
import re

import yaml

from utils.framing import DEFAULT_FPS, MOTION_DIM, WAV2VEC2_SAMPLE_RATE

from utils.errors import UserError


class ConfigError(UserError, ValueError):
    """A problem in a config file or an override, with the file/key named in the message."""


DATASET_DEFAULTS = {
    "format": "vhap",        # "emoca" (expcode/posecode) or "vhap" (expr/jaw_pose)
    "fps": 25,               # native frame rate of the FLAME tracking
    "train": None,           # JSON index (relative to DATA.data_root or absolute), or a list of them
    "val": None,
    "test": None,
    "flame_model": None,     # per-dataset FLAME model file; None = FLAME.model_path
}

DEFAULTS = {
    "DATA": {
        "data_root": "${DATA_ROOT}",
        "datasets": {},          # name -> DATASET_DEFAULTS-shaped entry
        "target_fps": DEFAULT_FPS,                # motion frame rate of the model (utils/framing.py)
        "sample_rate": WAV2VEC2_SAMPLE_RATE,      # audio rate of the model; files of any rate are resampled
        "max_frames": 300,       # random training crop length (frames at target_fps); 0 = whole clip
        "train_subjects": None,  # speaker ids: the style classes, and the only training speakers; None = all
        "val_subjects": None,    # speaker ids kept in the val split; None = all
        "test_subjects": None,   # speaker ids kept in the test split (inference, evaluation); None = all
        "bad_samples": "error",  # "error": fail at start-up validation; "skip": drop them with a report
        "max_av_diff": 0.5,      # seconds of audio/motion length mismatch reported before trimming
        "num_workers": 0,
    },
    "MODEL": {
        "audio_encoder_repo": "facebook/wav2vec2-base-960h",
        "audio_encoder_pretrained": True,
        "audio_encoder_config": None,   # dict of Wav2Vec2Config kwargs when not pretrained
        "freeze_feature_encoder": True,
        "feature_dim": 64,
        "n_head": 4,
        "num_layers": 1,
        "ff_dim": None,                # feed-forward width; null = 2 x feature_dim
        "dropout": 0.1,
        "period": 30,
        "motion_dim": MOTION_DIM,
    },
    "FLAME": {
        "model_path": "FLAME/generic_model.pkl",
        "masks_path": "FLAME/FLAME_masks.pkl",
        "lip_indices": None,          # optional .npy/.txt of vertex ids overriding the mask file
        "upper_face_indices": None,
        "n_shape": 100,               # shape dims used from a sample's shape vector
    },
    "TRAIN": {
        "lr": 1.0e-4,
        "epochs": 200,
        "batch_size": 1,
        "grad_accum": 1,
        "amp": False,
        "device": "cuda",
        "seed": 0,
        "save_path": "outputs/faceformer_multi_dataset",
        "resume": False,              # continue from save_path/last.pth
        "overwrite": False,           # allow starting afresh in a folder that holds a previous run
        "mode": "parallel_sampling",  # teacher_forcing | parallel_sampling | scheduled_rollout | rollout
        "sampling_max": 1.0,          # final probability of feeding the model's own previous frame ...
        "sampling_start_epoch": 0,    # ... ramped linearly from 0 after this many epochs ...
        "sampling_warmup_epochs": 20, # ... over this many epochs (0: at sampling_max from the start)
        "sampling_passes": 1,         # parallel_sampling: no-grad passes that make the fed predictions
        "input_noise": 0.0,           # std of noise on ground-truth previous frames (teacher_forcing, parallel_sampling)
        "teacher_forcing": None,      # old key: false = mode rollout, true = mode teacher_forcing
        "val_every": 1,
        "velocity_weight": 0.0,
        "max_steps_per_epoch": 0,     # 0 = full epoch
        "log_every": 20,
    },
    "INFER": {
        "checkpoint": None,           # None = TRAIN.save_path/best_model.pth
        "output_root": "results/metrics/faceformer_run/test",
        "coeff_root": "results/coeffs/faceformer_run/test",
        "exp_name": "faceformer",
        "output_fps": "native",       # "native" (each dataset's fps) or a number such as 25
        "condition_style": None,      # style for untrained speakers; None = first training style
        "window_seconds": 30.0,       # long audio is encoded in windows of this length ...
        "overlap_seconds": 2.0,       # ... overlapping by this much, cross-faded
        "attention_window": 600,      # decoder attends the last N frames only (0 = unbounded)
        "stream_chunk_ms": 200,       # streaming (--stream, --audio -): processing granularity ...
        "stream_lookahead_ms": 300,   # ... audio after a frame needed to emit it (latency = chunk + lookahead)
        "stream_left_context_ms": 1000,  # ... past audio the wav2vec2 transformer sees (< 0: all)
        "batch_size": 4,
        "device": "cuda",
        "split": "test",
        "overwrite": False,           # redo every sample's results
        "resume": False,              # keep complete samples, make the missing ones (after a crash)
    },
}

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Config(dict):
    """A dict with attribute access, recursively (``cfg.TRAIN.lr``)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value

    def to_dict(self) -> dict:
        return _plain(self)


def _wrap(x):
    if isinstance(x, dict):
        return Config({k: _wrap(v) for k, v in x.items()})
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x


def expand_env(value, where: str = ""):
    """Replace ``${VAR}`` / ``${VAR:-default}`` in strings (recursively). Unset without default stays
    as is, so a missing DATA_ROOT is reported where the path is used, with the variable's name."""
    if isinstance(value, str):
        def sub(m):
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            return default if default is not None else m.group(0)
        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, where) for v in value]
    return value


def _unknown(key: str, valid, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.4)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"{where}: unknown config key '{key}'{hint}; valid keys: {', '.join(sorted(valid))}")


def _merge(base: dict, new: dict, schema: dict, prefix: str, where: str):
    for key, value in (new or {}).items():
        path = f"{prefix}.{key}" if prefix else key
        if prefix == "DATA.datasets":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {path} must be a mapping of dataset settings, got {value!r}")
            entry = base.setdefault(key, copy.deepcopy(DATASET_DEFAULTS))
            _merge(entry, value, DATASET_DEFAULTS, path, where)
            continue
        if key not in schema:
            raise _unknown(path, [f"{prefix}.{k}" if prefix else k for k in schema], where)
        if isinstance(schema[key], dict) and (schema[key] or key == "datasets"):
            if value is None:
                continue  # an empty section (all its keys commented out) keeps the defaults
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {path} must be a mapping, got {value!r}")
            _merge(base[key], value, schema[key], path, where)
        else:
            default = schema[key]
            if isinstance(default, (int, float)) and not isinstance(default, bool) \
                    and isinstance(value, str) and path not in _NUMBER_OR_WORD:
                number = _as_number(value)  # PyYAML reads 1e-4 (no dot) as a string
                if isinstance(number, str):
                    raise ConfigError(f"{where}: {path} is {value!r}; expected a number")
                value = number
            base[key] = value


# Keys that take a number or a word, so the type of their current value says nothing.
_NUMBER_OR_WORD = {"INFER.output_fps"}
# Keys (default None) whose command-line value is text even when YAML would read a number.
_TEXT_KEYS = {"DATA.train_subjects", "DATA.val_subjects", "DATA.test_subjects", "INFER.condition_style",
              "INFER.checkpoint", "FLAME.lip_indices", "FLAME.upper_face_indices"}


def _as_number(text: str):
    """'1e-4' -> 0.0001 (YAML 1.1 needs a dot for floats); anything else is returned unchanged."""
    try:
        return float(text)
    except ValueError:
        return text


def _parse_value(text: str, old, key: str):
    try:
        value = yaml.safe_load(text) if text != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}={text}: not valid YAML ({e})") from None
    if key.strip() in _TEXT_KEYS and isinstance(value, (bool, int, float)):
        return text  # a speaker id or a path keeps its text: DATA.test_subjects=001, INFER.condition_style=007
    if old is None or value is None or key.strip() in _NUMBER_OR_WORD:
        return value
    if isinstance(old, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"override {key}={text}: expected true/false")
        return value
    if isinstance(old, (int, float)):
        if isinstance(value, str):
            value = _as_number(value)  # PyYAML reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"override {key}={text}: expected a number")
        if isinstance(old, float):
            return float(value)
        return int(value) if float(value).is_integer() else value  # TRAIN.epochs=1e2 -> 100
    if isinstance(old, str) and isinstance(value, (bool, int, float)):
        return text  # a string key keeps the text: INFER.exp_name=2024, TRAIN.device=yes
    return value


def apply_override(cfg: dict, item: str):
    """Apply one ``SECTION.key=value`` (or ``DATA.datasets.NAME.key=value``) override in place."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected SECTION.key=value")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    node, schema, prefix = cfg, DEFAULTS, ""
    for i, part in enumerate(parts):
        path = f"{prefix}.{part}" if prefix else part
        last = i == len(parts) - 1
        if prefix == "DATA.datasets":
            if part not in node:
                if last:
                    raise ConfigError(f"override '{item}': a whole dataset cannot be set from the command line")
                node[part] = copy.deepcopy(DATASET_DEFAULTS)
            node, schema, prefix = node[part], DATASET_DEFAULTS, path
            continue
        if part not in schema:
            raise _unknown(path, [f"{prefix}.{k}" if prefix else k for k in schema], "command line")
        if last:
            if isinstance(node.get(part), dict) and part != "audio_encoder_config":
                raise ConfigError(f"override '{item}': {path} is a section; name one of its keys")
            node[part] = expand_env(_parse_value(text, node.get(part), key))
            return
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"override '{item}': {path} is not a section")
        node, schema, prefix = node[part], schema[part] if isinstance(schema[part], dict) else {}, path


def load_config(path: str | None = None, overrides=()) -> Config:
    """Defaults <- YAML file <- overrides, environment variables expanded, checked. Returns a Config."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        in_repo = os.path.join(REPO_ROOT, str(path))
        if not os.path.isfile(path) and not os.path.isabs(path) and os.path.isfile(in_repo):
            path = in_repo  # e.g. --config config/demo.yaml run from outside the repo
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        with open(path) as f:
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections {list(DEFAULTS)}, got {type(data).__name__}")
        _merge(cfg, expand_env(data), DEFAULTS, "", path)
    for item in overrides or ():
        apply_override(cfg, item)
    cfg = _wrap(cfg)
    validate(cfg, path or "config")
    return cfg


# Keys whose default is None, with the types they accept: (check, what the message says is expected).
def _is_str(v):
    return isinstance(v, str) and v != ""


def _is_paths(v):
    return _is_str(v) or (isinstance(v, list) and len(v) > 0 and all(_is_str(x) for x in v))


_OPTIONAL_TYPES = {
    "MODEL.audio_encoder_config": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
                                   "a mapping of Wav2Vec2Config arguments (e.g. {hidden_size: 64})"),
    "MODEL.ff_dim": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
                     "a positive integer (feed-forward width; null = 2 x feature_dim)"),
    "FLAME.lip_indices": (_is_str, "a path to a .npy/.txt file of vertex ids"),
    "FLAME.upper_face_indices": (_is_str, "a path to a .npy/.txt file of vertex ids"),
    "INFER.checkpoint": (_is_str, "a checkpoint path"),
    "TRAIN.teacher_forcing": (lambda v: isinstance(v, bool), "true or false"),
    "INFER.condition_style": (_is_str, "a trained style (speaker id) as a string"),
}
_DATASET_TYPES = {
    "train": (_is_paths, "a JSON index path or a list of them"),
    "val": (_is_paths, "a JSON index path or a list of them"),
    "test": (_is_paths, "a JSON index path or a list of them"),
    "flame_model": (_is_str, "a FLAME model file path"),
    "format": (_is_str, "'emoca' or 'vhap'"),
}
SUBJECT_KEYS = ("train_subjects", "val_subjects", "test_subjects")


def _type_name(v) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false"}.get(type(v), type(v).__name__)


def parse_subjects(value, key: str, where: str = "config"):
    """A *_subjects value -> list of speaker ids or None. A string is split on commas and whitespace
    (the original FaceFormer's ``--train_subjects "A B C"``); a list must hold strings."""
    if value is None:
        return None
    if isinstance(value, str):
        items = [s for s in re.split(r"[,\s]+", value) if s]
    elif isinstance(value, list) and all(isinstance(s, str) for s in value):
        items = [s.strip() for s in value]
    else:
        bad = [s for s in value if not isinstance(s, str)] if isinstance(value, list) else None
        got = f"a list holding {bad[0]!r} ({_type_name(bad[0])})" if bad else f"{value!r} ({_type_name(value)})"
        raise ConfigError(f"{where}: {key} is {got}; expected a list of speaker ids as strings (quote ids "
                          f"such as '001' in YAML) or one string of ids separated by commas or spaces")
    if not items or not all(items):
        raise ConfigError(f"{where}: {key} is {value!r}; expected at least one speaker id (or null: all speakers)")
    dup = sorted({s for s in items if items.count(s) > 1})
    if dup:
        raise ConfigError(f"{where}: {key} names {', '.join(dup)} more than once")
    return items


def _check_types(cfg: Config, where: str):
    """Every key holds a value of the type its default has (or, for keys defaulting to None, one of the
    types in _OPTIONAL_TYPES); a list or mapping where a number or a word belongs is an error."""
    for section, keys in DEFAULTS.items():
        for key, default in keys.items():
            path, value = f"{section}.{key}", cfg[section][key]
            if path == "DATA.datasets" or path in ("DATA." + k for k in SUBJECT_KEYS):
                continue
            if path in _OPTIONAL_TYPES:
                ok, expected = _OPTIONAL_TYPES[path]
                if value is not None and not ok(value):
                    raise ConfigError(f"{where}: {path} is {value!r} ({_type_name(value)}); expected {expected} or null")
                continue
            if default is None or path in _NUMBER_OR_WORD:
                if isinstance(value, (list, dict)):
                    raise ConfigError(f"{where}: {path} is {_type_name(value)} {value!r}; expected a single value")
                continue
            if isinstance(default, bool):
                ok, expected = isinstance(value, bool), "true or false"
            elif isinstance(default, (int, float)):
                ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
            else:
                ok, expected = isinstance(value, str), "a string"
            if not ok:
                raise ConfigError(f"{where}: {path} is {value!r} ({_type_name(value)}); expected {expected}")
    if not isinstance(cfg.DATA.datasets, dict):
        raise ConfigError(f"{where}: DATA.datasets is {_type_name(cfg.DATA.datasets)}; expected a mapping "
                          f"of dataset name -> settings")
    for name, ds in cfg.DATA.datasets.items():
        for key, (ok, expected) in _DATASET_TYPES.items():
            value = ds.get(key)
            if value is not None and not ok(value):
                raise ConfigError(f"{where}: DATA.datasets.{name}.{key} is {value!r} ({_type_name(value)}); "
                                  f"expected {expected}" + (" or null" if key != "format" else ""))


def validate(cfg: Config, where: str):
    from utils.framing import framing_from_config

    _check_types(cfg, where)
    for key in SUBJECT_KEYS:
        cfg.DATA[key] = parse_subjects(cfg.DATA[key], f"DATA.{key}", where)
    for name, ds in cfg.DATA.datasets.items():
        if ds.format not in ("emoca", "vhap"):
            raise ConfigError(f"{where}: DATA.datasets.{name}.format is '{ds.format}'; expected 'emoca' or 'vhap'")
        if isinstance(ds.fps, bool) or not isinstance(ds.fps, (int, float)) or ds.fps <= 0:
            raise ConfigError(f"{where}: DATA.datasets.{name}.fps must be a positive number, got {ds.fps!r}")
    if cfg.DATA.bad_samples not in ("error", "skip"):
        raise ConfigError(f"{where}: DATA.bad_samples is '{cfg.DATA.bad_samples}'; expected 'error' or 'skip'")
    fps = cfg.INFER.output_fps
    if not (fps == "native" or (isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0)):
        raise ConfigError(f"{where}: INFER.output_fps is {fps!r}; expected 'native' or a positive number")
    framing_from_config(cfg, where)  # DATA.sample_rate / target_fps / MODEL.motion_dim the model can honour
    _check_train_mode(cfg.TRAIN, where)


TRAIN_MODES = ("teacher_forcing", "parallel_sampling", "scheduled_rollout", "rollout")


def _check_train_mode(train: Config, where: str):
    """TRAIN.mode and its schedule keys; the old TRAIN.teacher_forcing is folded into TRAIN.mode."""
    if train.teacher_forcing is not None:
        alias = "teacher_forcing" if train.teacher_forcing else "rollout"
        if train.mode not in (alias, DEFAULTS["TRAIN"]["mode"]):
            raise ConfigError(f"{where}: TRAIN.teacher_forcing={str(train.teacher_forcing).lower()} contradicts "
                              f"TRAIN.mode={train.mode}; set only TRAIN.mode")
        train.mode, train.teacher_forcing = alias, None
    if train.mode not in TRAIN_MODES:
        raise ConfigError(f"{where}: TRAIN.mode is {train.mode!r}; expected one of {', '.join(TRAIN_MODES)}")
    if not 0 <= train.sampling_max <= 1:
        raise ConfigError(f"{where}: TRAIN.sampling_max is {train.sampling_max}; expected a probability in [0, 1]")
    for key in ("sampling_start_epoch", "sampling_warmup_epochs", "input_noise"):
        if train[key] < 0:
            raise ConfigError(f"{where}: TRAIN.{key} is {train[key]}; expected a number >= 0")
    if not (isinstance(train.sampling_passes, int) and train.sampling_passes >= 1):
        raise ConfigError(f"{where}: TRAIN.sampling_passes is {train.sampling_passes!r}; expected an integer >= 1")


def resolve_data_path(cfg: Config, path: str | None) -> str | None:
    """A relative DATA/FLAME path is joined to DATA.data_root; an absolute one is kept (DESIGN.md 9)."""
    if path is None:
        return None
    path = os.path.expanduser(str(path))
    if os.path.isabs(path):
        return path
    root = str(cfg.DATA.data_root)
    if "${" in root:
        raise ConfigError(f"DATA.data_root is '{root}': set the environment variable "
                          f"(e.g. export DATA_ROOT=/path/to/data) or pass DATA.data_root=/path")
    return os.path.join(root, path)


def save_config(cfg: Config, path: str):
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
