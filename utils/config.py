"""YAML configuration: defaults, environment expansion, typed command-line overrides.

A config has five sections (DATA, MODEL, FLAME, TRAIN, INFER). Every valid key and its default is
in ``DEFAULTS`` (utils/config_schema.py, with the checks a loaded config passes); a YAML file or an
override that names any other key is an error that lists the closest valid keys. ``DATA.datasets``
maps a dataset name to a dataset entry whose keys are those of ``DATASET_DEFAULTS``.

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

from utils.config_schema import DATASET_DEFAULTS, DEFAULTS, NUMBER_OR_WORD, RETIRED_KEYS, check_config
from utils.errors import ConfigError

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


def config_from_dict(d: dict) -> Config:
    """A plain nested dict (e.g. a checkpoint's saved config) as a Config with attribute access."""
    return _wrap(d)


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
    if key in RETIRED_KEYS:
        return ConfigError(f"{where}: {key} is no longer a setting: {RETIRED_KEYS[key]}; remove it")
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.4)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    shown = key if key.isprintable() else ascii(key)[1:-1]  # the message stays one line
    return ConfigError(f"{where}: unknown config key '{shown}'{hint}; valid keys: {', '.join(sorted(valid))}")


def _merge(base: dict, new: dict, schema: dict, prefix: str, where: str):
    for key, value in (new or {}).items():
        path = f"{prefix}.{key}" if prefix else str(key)  # YAML keys may be numbers or null
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
                    and isinstance(value, str) and path not in NUMBER_OR_WORD:
                number = _as_number(value)  # PyYAML reads 1e-4 (no dot) as a string
                if isinstance(number, str):
                    raise ConfigError(f"{where}: {path} is {value!r}; expected a number")
                value = number
            base[key] = value


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
    value = yaml_bounded(text, f"override {key}={text}") if text != "" else None
    if key.strip() in _TEXT_KEYS and isinstance(value, (bool, int, float)):
        return text  # a speaker id or a path keeps its text: DATA.test_subjects=001, INFER.condition_style=007
    if old is None or value is None or key.strip() in NUMBER_OR_WORD:
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
    if not item.isprintable():  # a newline or control character: quoting gone wrong, and a multi-line message
        raise ConfigError(f"override {ascii(item)}: contains a control character (newline, tab, NUL ...); "
                          f"expected SECTION.key=value")
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


# A config is a few KB of plain settings. The limits below are far above any real one and refuse, before
# anything is expanded, what would otherwise hang or exhaust memory: a few hundred bytes of nested
# aliases (a "billion laughs" document) stand for an exponentially large tree, which walking the
# config (environment expansion, merging) would visit node by node; deep nesting overflows the
# parser's recursion.
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_NODES = 100_000   # scalars and collections, counting each alias as the size of what it names
MAX_YAML_DEPTH = 32


def yaml_bounded(text: str, where: str):
    """yaml.safe_load of ``text`` once its events pass the size (aliases expanded) and depth limits;
    ConfigError naming ``where`` otherwise (also for invalid YAML)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: {len(text)} characters; a config is at most {MAX_CONFIG_BYTES} (is this "
                          f"the right file?)")
    try:
        sizes, open_nodes, total = {}, [], 0   # anchor -> expanded size; [anchor, size] per open collection
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                open_nodes.append([event.anchor, 1])
                if len(open_nodes) > MAX_YAML_DEPTH:
                    raise ConfigError(f"{where}: YAML nested more than {MAX_YAML_DEPTH} levels deep")
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                anchor, n = open_nodes.pop()
            elif isinstance(event, yaml.ScalarEvent):
                anchor, n = event.anchor, 1
            elif isinstance(event, yaml.AliasEvent):
                if any(a == event.anchor for a, _ in open_nodes):
                    raise ConfigError(f"{where}: YAML alias *{event.anchor} refers to a value that contains it "
                                      f"(a recursive structure cannot be a config value)")
                anchor, n = None, sizes.get(event.anchor, 1)
            else:
                continue
            if anchor is not None:
                sizes[anchor] = n
            if open_nodes:
                open_nodes[-1][1] += n
            else:
                total += n
            if total + sum(size for _, size in open_nodes) > MAX_YAML_NODES:
                raise ConfigError(f"{where}: the YAML stands for more than {MAX_YAML_NODES} values once its "
                                  f"aliases (*name) are expanded; a config needs far fewer (refused before "
                                  f"expanding them)")
        return yaml.safe_load(text)
    except yaml.YAMLError as e:  # PyYAML's message spans lines (with a caret under the spot): one line here
        raise ConfigError(f"{where}: not valid YAML: " + " ".join(ln.strip() for ln in str(e).splitlines()
                                                                   if ln.strip() and ln.strip() != "^")) from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None


def load_yaml_bounded(path: str):
    """A YAML file (UTF-8, at most MAX_CONFIG_BYTES) through ``yaml_bounded``."""
    try:
        size = os.path.getsize(path)
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size} bytes; a config is at most {MAX_CONFIG_BYTES} bytes (is this the "
                              f"right file?)")
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected a YAML config") from None
    return yaml_bounded(text, path)


def load_config(path: str | None = None, overrides=()) -> Config:
    """Defaults <- YAML file <- overrides, environment variables expanded, checked. Returns a Config."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        in_repo = os.path.join(REPO_ROOT, str(path))
        if not os.path.isfile(path) and not os.path.isabs(path) and os.path.isfile(in_repo):
            path = in_repo  # e.g. --config config/demo.yaml run from outside the repo
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        data = load_yaml_bounded(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections {list(DEFAULTS)}, got {type(data).__name__}")
        _merge(cfg, expand_env(data), DEFAULTS, "", path)
    for item in overrides or ():
        apply_override(cfg, item)
    cfg = _wrap(cfg)
    check_config(cfg, path or "config")
    return cfg


def resolve_data_path(cfg: Config, path: str | None) -> str | None:
    """A relative DATA/FLAME path is joined to DATA.data_root; an absolute one is kept, so
    ``DATA.data_root=/elsewhere`` moves a whole dataset copy, FLAME files included."""
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


def flame_path_for(cfg: Config, dataset_name: str | None = None) -> str:
    """The FLAME model file of a dataset (``DATA.datasets.<name>.flame_model``, else ``FLAME.model_path``),
    resolved against DATA.data_root."""
    path = cfg.FLAME.model_path
    if dataset_name is not None:
        if dataset_name not in cfg.DATA.datasets:
            raise ConfigError(f"unknown dataset '{dataset_name}'; configured: {', '.join(cfg.DATA.datasets)}")
        path = cfg.DATA.datasets[dataset_name].get("flame_model") or path
    return resolve_data_path(cfg, path)


def flame_region_paths(cfg: Config) -> dict:
    """The face-region files of a config, resolved: ``masks_path``, ``lip_indices``, ``upper_face_indices``
    (None when unset), as models/flame_regions.py ``region_indices`` takes them."""
    fl = cfg.FLAME
    return {"masks_path": resolve_data_path(cfg, fl.masks_path),
            "lip_indices": resolve_data_path(cfg, fl.get("lip_indices")) if fl.get("lip_indices") else None,
            "upper_face_indices": (resolve_data_path(cfg, fl.get("upper_face_indices"))
                                   if fl.get("upper_face_indices") else None)}


def save_config(cfg: Config, path: str):
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
