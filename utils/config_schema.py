"""The config's schema: every key with its default (``DEFAULTS``, ``DATASET_DEFAULTS``) and the checks
a loaded config passes (``check_config``: types from tables, then ranges and cross-key rules).

utils/config.py loads, merges and overrides; this module says what a valid config is.
"""
from __future__ import annotations

import math
import re

from utils.errors import ConfigError
from utils.framing import DEFAULT_FPS, MOTION_DIM, WAV2VEC2_SAMPLE_RATE, framing_from_config
from utils.names import folder_name_problem, shown_name
from utils.trackers import FORMATS

DATASET_DEFAULTS = {
    "format": "vhap",        # a tracker format: a key of utils/trackers.py FORMATS
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
        "max_frames": 300,       # random training crop length (frames at target_fps); 0 = whole clip
        "train_subjects": None,  # speaker ids: the style classes, and the only training speakers; None = all
        "val_subjects": None,    # speaker ids kept in the val split; None = all
        "test_subjects": None,   # speaker ids kept in the test split (inference, evaluation); None = all
        "bad_samples": "error",  # "error": fail at start-up validation; "skip": drop them with a report
        "max_av_diff": 0.5,      # seconds of audio/motion length mismatch reported before trimming
        "num_workers": "auto",   # loader processes per loader; auto: 0 on CPU, else a share of the cores (main/train.py)
        "store_root": None,      # prepared-data store folder; null: <data_root>/.prepared; off: read the source files
    },
    "MODEL": {
        "audio_encoder_repo": "facebook/wav2vec2-base-960h",
        "audio_encoder_pretrained": True,
        "audio_encoder_config": None,   # dict of Wav2Vec2Config kwargs when not pretrained
        "freeze_feature_encoder": True,
        "audio_frontend": "cnn",        # cnn: wav2vec2's; logmel: a fixed log-mel front end (random init only)
        "encoder_block_frames": 0,      # > 0: trained for streaming: the encoder's frames come in blocks of this many, ...
        "encoder_lookahead_frames": 0,  # ... it sees this many frames past a block (its first layer) ...
        "encoder_left_frames": 25,      # ... and attends this many frames before it (models/block_encoder.py)
        "feature_dim": 64,
        "n_head": 4,
        "num_layers": 1,
        "ff_dim": None,                # feed-forward width; null = 2 x feature_dim
        "dropout": 0.1,
        "period": 30,
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
        "mode": "parallel_rollout",   # teacher_forcing | parallel_sampling | parallel_rollout | scheduled_rollout | rollout
        "sampling_max": 1.0,          # final probability of feeding the model's own previous frame ...
        "sampling_start_epoch": 0,    # ... ramped linearly from 0 after this many epochs ...
        "sampling_warmup_epochs": 20, # ... over this many epochs (0: at sampling_max from the start)
        "sampling_passes": 1,         # parallel_sampling: no-grad passes that make the fed predictions
        "rollout_steps": 6,           # parallel_rollout: passes fed with the previous pass's predictions
        "input_noise": 0.0,           # std of noise on ground-truth previous frames (the parallel modes)
        "teacher_forcing": None,      # old key: false = mode rollout, true = mode teacher_forcing
        "val_every": 1,
        "velocity_weight": 0.0,
        "lip_weight": 0.0,             # lip-aperture loss term (0: the original FaceFormer loss)
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
        "stream_chunk_ms": None,      # streaming (--stream, --audio -): processing granularity ...
        "stream_lookahead_ms": None,  # ... audio after a frame needed to emit it (latency = chunk + lookahead);
                                      # null: the model's (STREAM_MS_UNBLOCKED for an encoder not trained for it)
        "stream_left_context_ms": 1000,  # ... past audio the wav2vec2 transformer sees (< 0: all)
        "stream_warmup_ms": 0,        # ... audio held before the first frame (once): warmer normalisation
        "batch_size": 4,
        "device": "cuda",
        "split": "test",
        "overwrite": False,           # redo every sample's results
        "resume": False,              # keep complete samples, make the missing ones (after a crash)
    },
}

# INFER.stream_chunk_ms / stream_lookahead_ms when null, for a model whose encoder was not trained for
# streaming (MODEL.encoder_block_frames 0); one that was streams by its trained block and lookahead
STREAM_MS_UNBLOCKED = {"stream_chunk_ms": 200, "stream_lookahead_ms": 300}

# Keys a config may no longer set, because only one value ever worked: what to tell a config that sets one.
RETIRED_KEYS = {
    "DATA.sample_rate": f"the audio encoder (wav2vec2) always runs at {WAV2VEC2_SAMPLE_RATE} Hz and audio "
                        f"files of any rate are resampled to it when they are read",
    "MODEL.motion_dim": f"the motion is always {MOTION_DIM} numbers ({MOTION_DIM - 1} expression + 1 jaw)",
}

# Keys that take a number or a word, so the type of their current value says nothing.
NUMBER_OR_WORD = {"INFER.output_fps", "DATA.num_workers"}


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
    "DATA.store_root": (lambda v: v is False or _is_str(v),
                        "a folder path for the prepared-data store, or off (read the source files)"),
    "TRAIN.teacher_forcing": (lambda v: isinstance(v, bool), "true or false"),
    "INFER.condition_style": (_is_str, "a trained style (speaker id) as a string"),
}
_DATASET_TYPES = {
    "train": (_is_paths, "a JSON index path or a list of them"),
    "val": (_is_paths, "a JSON index path or a list of them"),
    "test": (_is_paths, "a JSON index path or a list of them"),
    "flame_model": (_is_str, "a FLAME model file path"),
    "format": (_is_str, " or ".join(f"'{name}'" for name in FORMATS)),
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


def _check_types(cfg, where: str):
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
            if default is None or path in NUMBER_OR_WORD:
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


def _ranges(table: str) -> dict:
    """Rows of ``key  whole|number  lowest  highest`` ('-': unbounded) -> {key: (whole?, low, high)}."""
    rows = (line.split() for line in table.strip().splitlines())
    return {key: (kind == "whole", None if low == "-" else float(low), None if high == "-" else float(high))
            for key, kind, low, high in rows}


# Range of every numeric key: (whole number?, lowest, highest). Checked where the config is read, so
# that a value no run can use fails at once with its key named instead of deep inside torch or the
# loader, after the data check; the upper bounds keep memory-sized values (batch sizes, crop and window
# lengths) far below what would exhaust a machine by a typo. TRAIN.seed stops 100000 short of numpy's
# largest seed because rank and epoch are added to it; stream_lookahead_ms reaches beyond any input
# (everything at flush); stream_left_context_ms below 0 means all past audio.
NUMERIC_RANGES = _ranges("""
DATA.max_frames                whole   0      1e6
DATA.max_av_diff               number  0      3600
MODEL.feature_dim              whole   1      65536
MODEL.n_head                   whole   1      1024
MODEL.num_layers               whole   1      256
MODEL.ff_dim                   whole   1      1048576
MODEL.dropout                  number  0      0.99
MODEL.period                   whole   1      1e6
MODEL.encoder_block_frames     whole   0      1e4
MODEL.encoder_left_frames      whole   0      1e6
MODEL.encoder_lookahead_frames whole   0      1e4
FLAME.n_shape                  whole   0      300
TRAIN.lr                       number  1e-12  10
TRAIN.epochs                   whole   0      1e6
TRAIN.batch_size               whole   1      4096
TRAIN.grad_accum               whole   1      4096
TRAIN.seed                     whole   0      2147383647
TRAIN.sampling_max             number  0      1
TRAIN.sampling_start_epoch     number  0      1e6
TRAIN.sampling_warmup_epochs   number  0      1e6
TRAIN.sampling_passes          whole   1      64
TRAIN.rollout_steps            whole   1      64
TRAIN.input_noise              number  0      100
TRAIN.val_every                whole   1      1e6
TRAIN.velocity_weight          number  0      1e6
TRAIN.lip_weight               number  0      1e6
TRAIN.max_steps_per_epoch      whole   0      -
TRAIN.log_every                whole   1      -
INFER.window_seconds           number  0.04   600
INFER.overlap_seconds          number  0      300
INFER.attention_window         whole   0      1e6
INFER.stream_chunk_ms          number  10     60000
INFER.stream_lookahead_ms      number  0      1e10
INFER.stream_left_context_ms   number  -      3.6e6
INFER.stream_warmup_ms         number  0      3.6e6
INFER.batch_size               whole   1      4096
""")


def check_number(value, key: str, whole: bool, low, high, where: str = "config"):
    """``value`` as a finite number of ``key``'s range (an int when ``whole``), else ConfigError naming
    the key, the value and the range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (low is None or value >= low) and (high is None or value <= high) \
        and (not whole or float(value).is_integer())
    if ok:
        return int(value) if whole else value
    kind = "a whole number" if whole else "a number"
    bounds = (f"in [{low:g}, {high:g}]" if low is not None and high is not None else
              f">= {low:g}" if low is not None else f"<= {high:g}" if high is not None else "finite")
    raise ConfigError(f"{where}: {key} is {value!r}; expected {kind} {bounds}")


def _check_ranges(cfg, where: str):
    for path, (whole, low, high) in NUMERIC_RANGES.items():
        section, key = path.split(".")
        if cfg[section][key] is not None:
            cfg[section][key] = check_number(cfg[section][key], path, whole, low, high, where)
    for name, ds in cfg.DATA.datasets.items():
        check_number(ds.fps, f"DATA.datasets.{name}.fps", False, 1e-3, 10_000, where)
    if cfg.INFER.output_fps != "native":
        check_number(cfg.INFER.output_fps, "INFER.output_fps", False, 1e-3, 10_000, where)
    if cfg.MODEL.encoder_lookahead_frames and not cfg.MODEL.encoder_block_frames:
        raise ConfigError(f"{where}: MODEL.encoder_lookahead_frames ({cfg.MODEL.encoder_lookahead_frames}) applies to "
                          f"an encoder trained for streaming: set MODEL.encoder_block_frames > 0 too, or the "
                          f"lookahead to 0")
    if cfg.MODEL.feature_dim % cfg.MODEL.n_head:
        raise ConfigError(f"{where}: MODEL.feature_dim ({cfg.MODEL.feature_dim}) must be a multiple of "
                          f"MODEL.n_head ({cfg.MODEL.n_head})")


def _check_names(cfg, where: str):
    """Dataset names and INFER.exp_name become folders of the results tree (exp_name may nest: a/b)."""
    named = [(f"DATA.datasets key {shown_name(n)}", n) for n in cfg.DATA.datasets]
    named += [(f"INFER.exp_name {shown_name(cfg.INFER.exp_name)}", part)
              for part in str(cfg.INFER.exp_name).strip("/").split("/")]
    for what, name in named:
        why = folder_name_problem(name)
        if why:
            raise ConfigError(f"{where}: {what} cannot be a folder name: {why}")


def check_config(cfg, where: str):
    """Every value of a merged config (a Config) is of its key's type and in its range; the subject
    lists are normalised in place. ConfigError naming ``where`` and the key otherwise."""
    _check_types(cfg, where)
    for key in SUBJECT_KEYS:
        cfg.DATA[key] = parse_subjects(cfg.DATA[key], f"DATA.{key}", where)
    for name, ds in cfg.DATA.datasets.items():
        if ds.format not in FORMATS:
            raise ConfigError(f"{where}: DATA.datasets.{name}.format is '{ds.format}'; expected "
                              f"{_DATASET_TYPES['format'][1]}")
        if isinstance(ds.fps, bool) or not isinstance(ds.fps, (int, float)) or ds.fps <= 0:
            raise ConfigError(f"{where}: DATA.datasets.{name}.fps must be a positive number, got {ds.fps!r}")
    if cfg.DATA.bad_samples not in ("error", "skip"):
        raise ConfigError(f"{where}: DATA.bad_samples is '{cfg.DATA.bad_samples}'; expected 'error' or 'skip'")
    workers = cfg.DATA.num_workers
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ConfigError(f"{where}: DATA.num_workers is {workers!r}; expected 'auto' or a whole number >= 0")
    fps = cfg.INFER.output_fps
    if not (fps == "native" or (isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0)):
        raise ConfigError(f"{where}: INFER.output_fps is {fps!r}; expected 'native' or a positive number")
    framing_from_config(cfg, where)  # a DATA.target_fps the model can honour
    _check_ranges(cfg, where)
    _check_names(cfg, where)
    _check_train_mode(cfg.TRAIN, where)
    _check_frontend(cfg.MODEL, where)


def _check_frontend(model, where: str):
    """MODEL.audio_frontend names a front end; a pretrained encoder keeps the CNN it was trained with."""
    from models.log_mel import FRONTENDS  # the front ends the encoder builds (imports torch: only here)

    if model.audio_frontend not in FRONTENDS:
        raise ConfigError(f"{where}: MODEL.audio_frontend is {model.audio_frontend!r}; expected one of "
                          f"{', '.join(FRONTENDS)}")
    if model.audio_frontend != "cnn" and model.audio_encoder_pretrained:
        raise ConfigError(f"{where}: MODEL.audio_frontend={model.audio_frontend} replaces the wav2vec2 CNN, so "
                          f"it needs MODEL.audio_encoder_pretrained=false (pretrained weights come with their CNN)")


TRAIN_MODES = ("teacher_forcing", "parallel_sampling", "parallel_rollout", "scheduled_rollout", "rollout")
SAMPLING_MODES = ("parallel_sampling", "parallel_rollout", "scheduled_rollout")  # follow the sampling schedule


def _check_train_mode(train, where: str):
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
    if not (isinstance(train.rollout_steps, int) and not isinstance(train.rollout_steps, bool)
            and 1 <= train.rollout_steps <= 64):
        raise ConfigError(f"{where}: TRAIN.rollout_steps is {train.rollout_steps!r}; expected an integer in [1, 64]")
