"""utils/config.py: environment expansion, typed overrides, unknown keys, dataset entries, paths."""
import os
import time

import pytest
import yaml

from utils.config import load_config, resolve_data_path, save_config
from utils.errors import ConfigError

DEMO_CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "demo.yaml")


def write_yaml(tmp_path, data, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_env_expansion_set_default_and_unset(tmp_path, monkeypatch):
    monkeypatch.setenv("FF_TEST_ROOT", "/data/faces")
    monkeypatch.delenv("FF_TEST_UNSET", raising=False)
    p = write_yaml(tmp_path, {
        "DATA": {"data_root": "${FF_TEST_ROOT}/v1"},
        "TRAIN": {"save_path": "${FF_TEST_UNSET:-outputs/x}"},
        "INFER": {"exp_name": "${FF_TEST_UNSET}"},
    })
    cfg = load_config(p)
    assert cfg.DATA.data_root == "/data/faces/v1"
    assert cfg.TRAIN.save_path == "outputs/x"
    # unset without default stays visible, so the error where it is used can name the variable
    assert cfg.INFER.exp_name == "${FF_TEST_UNSET}"


def test_env_expansion_in_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("FF_TEST_ROOT", "/mnt/d")
    cfg = load_config(None, ["DATA.data_root=${FF_TEST_ROOT}/x"])
    assert cfg.DATA.data_root == "/mnt/d/x"


def test_unset_data_root_error_names_variable(monkeypatch):
    monkeypatch.delenv("DATA_ROOT", raising=False)
    cfg = load_config(None)
    with pytest.raises(ConfigError, match="DATA_ROOT"):
        resolve_data_path(cfg, "dataset_jsons/a.json")


def test_typed_overrides():
    cfg = load_config(None, ["TRAIN.lr=5e-5", "TRAIN.epochs=3", "TRAIN.amp=true", "TRAIN.device=cpu",
                             "INFER.exp_name=2024", "DATA.train_subjects=[M003, W009]",
                             "MODEL.dropout=0", "INFER.output_fps=25"])
    # PyYAML reads '5e-5' as a string (YAML 1.1 floats need a dot): it must still become a float
    assert cfg.TRAIN.lr == pytest.approx(5e-5) and isinstance(cfg.TRAIN.lr, float)
    assert cfg.TRAIN.epochs == 3 and isinstance(cfg.TRAIN.epochs, int)
    assert cfg.TRAIN.amp is True
    assert cfg.TRAIN.device == "cpu"
    assert cfg.INFER.exp_name == "2024"  # a string key keeps the text, not the int 2024
    assert cfg.DATA.train_subjects == ["M003", "W009"]
    assert cfg.MODEL.dropout == 0.0 and isinstance(cfg.MODEL.dropout, float)
    assert cfg.INFER.output_fps == 25
    assert load_config(None, ["INFER.output_fps=native"]).INFER.output_fps == "native"


@pytest.mark.parametrize("item, msg", [
    ("TRAIN.lr=abc", "expected a number"),
    ("TRAIN.epochs=[1, 2]", "expected a number"),
    ("TRAIN.amp=3", "expected true/false"),
    ("TRAIN.lr", "SECTION.key=value"),
    ("TRAIN=1", "is a section"),
    ("INFER.output_fps=-2", "INFER.output_fps"),
    ("DATA.bad_samples=maybe", "bad_samples"),
])
def test_bad_overrides(item, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(None, [item])


def test_yaml_float_without_dot_and_empty_section(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("TRAIN:\n  lr: 1e-4\nFLAME:\n")  # 'FLAME:' with every key commented out
    cfg = load_config(str(p))
    assert cfg.TRAIN.lr == pytest.approx(1e-4) and isinstance(cfg.TRAIN.lr, float)
    assert cfg.FLAME.n_shape == 100
    p.write_text("TRAIN:\n  lr: fast\n")
    with pytest.raises(ConfigError, match="TRAIN.lr"):
        load_config(str(p))


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["TRAIN.lrr=0.1"])
    assert "TRAIN.lrr" in str(e.value) and "did you mean TRAIN.lr" in str(e.value)

    p = write_yaml(tmp_path, {"DATA": {"max_frame": 10}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert p in str(e.value) and "DATA.max_frames" in str(e.value)

    p = write_yaml(tmp_path, {"DATA": {"datasets": {"A": {"formt": "vhap"}}}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "DATA.datasets.A.formt" in str(e.value) and "DATA.datasets.A.format" in str(e.value)

    with pytest.raises(ConfigError, match="did you mean TRAIN"):
        load_config(None, ["TRAN.lr=1"])


def test_dataset_entries_defaults_and_overrides(tmp_path):
    p = write_yaml(tmp_path, {"DATA": {"datasets": {
        "A": {"format": "emoca", "train": "a.json"},
        "B": {"fps": 20, "train": ["b1.json", "b2.json"], "test": "bt.json"},
    }}})
    cfg = load_config(p, ["DATA.datasets.A.fps=30", "DATA.datasets.B.test=null",
                          "DATA.datasets.C.train=c.json", "DATA.datasets.B.fps=29.97"])
    a, b, c = cfg.DATA.datasets.A, cfg.DATA.datasets.B, cfg.DATA.datasets.C
    assert (a.format, a.fps, a.train, a.val, a.test) == ("emoca", 30, "a.json", None, None)
    assert b.format == "vhap" and b.fps == pytest.approx(29.97) and b.train == ["b1.json", "b2.json"]
    assert b.test is None
    assert (c.format, c.fps, c.train) == ("vhap", 25, "c.json")  # a new dataset gets the defaults
    with pytest.raises(ConfigError, match="whole dataset"):
        load_config(p, ["DATA.datasets.D={format: vhap}"])


def test_unknown_format_and_bad_fps_are_config_errors(tmp_path):
    p = write_yaml(tmp_path, {"DATA": {"datasets": {"A": {"format": "deca", "train": "a.json"}}}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert p in str(e.value) and "DATA.datasets.A.format" in str(e.value) and "deca" in str(e.value)
    with pytest.raises(ConfigError, match="DATA.datasets.B.format"):
        load_config(None, ["DATA.datasets.B.format=flame2023"])
    with pytest.raises(ConfigError, match="DATA.datasets.B.fps"):
        load_config(None, ["DATA.datasets.B.fps=0"])


def test_relative_paths_join_data_root_absolute_kept():
    cfg = load_config(None, ["DATA.data_root=/data/root"])
    assert resolve_data_path(cfg, "dataset_jsons/a.json") == "/data/root/dataset_jsons/a.json"
    assert resolve_data_path(cfg, "/abs/a.json") == "/abs/a.json"
    assert resolve_data_path(cfg, None) is None


def test_repo_configs_load_and_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", "/data")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("faceformer.yaml", "demo.yaml"):
        cfg = load_config(os.path.join(repo, "config", name))
        assert set(cfg.DATA.datasets) == {"digital_human", "MEAD_VHAP", "MultiModal200"}
        assert cfg.DATA.datasets.MultiModal200.fps == 20
        assert cfg.DATA.datasets.digital_human.format == "emoca"
        assert cfg.DATA.datasets.digital_human.val is None
        out = tmp_path / f"saved_{name}"
        save_config(cfg, str(out))
        assert load_config(str(out)) == cfg


def test_repo_config_names_flame_2023_for_vhap_and_2020_for_emoca(monkeypatch):
    monkeypatch.setenv("DATA_ROOT", "/data")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ds = load_config(os.path.join(repo, "config", "faceformer.yaml")).DATA.datasets
    # file names as the FLAME site distributes them
    assert ds.MEAD_VHAP.flame_model == ds.MultiModal200.flame_model == "FLAME/flame2023.pkl"
    assert ds.digital_human.flame_model == "FLAME/generic_model.pkl"


@pytest.mark.parametrize("value, expected", [
    ("M003 W009", ["M003", "W009"]),             # the original repo's space-separated string
    ("M003,W009, W011", ["M003", "W009", "W011"]),
    (["M003", "001"], ["M003", "001"]),
    (None, None),
])
def test_subjects_lists_and_strings(tmp_path, value, expected):
    for key in ("train_subjects", "val_subjects", "test_subjects"):
        cfg = load_config(write_yaml(tmp_path, {"DATA": {key: value}}))
        assert cfg.DATA[key] == expected


@pytest.mark.parametrize("value, msg", [
    ([1, 2], "DATA.test_subjects.*list of speaker ids"),   # YAML ints: ids must be quoted
    ({"a": 1}, "DATA.test_subjects"),
    (7, "DATA.test_subjects"),
    ([], "DATA.test_subjects.*at least one"),
    ("A A", "DATA.test_subjects names A more than once"),
])
def test_bad_subjects_are_config_errors(tmp_path, value, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(write_yaml(tmp_path, {"DATA": {"test_subjects": value}}))


def test_subjects_from_the_command_line_keep_their_text():
    cfg = load_config(None, ["DATA.test_subjects=001", "DATA.val_subjects=a,b", "INFER.condition_style=007"])
    assert cfg.DATA.test_subjects == ["001"] and cfg.DATA.val_subjects == ["a", "b"]
    assert cfg.INFER.condition_style == "007"


@pytest.mark.parametrize("data, key, expected", [
    ({"MODEL": {"audio_encoder_config": [64, 64]}}, "MODEL.audio_encoder_config", "mapping"),
    ({"MODEL": {"audio_encoder_config": "small"}}, "MODEL.audio_encoder_config", "mapping"),
    ({"FLAME": {"lip_indices": ["a.npy"]}}, "FLAME.lip_indices", "path"),
    ({"FLAME": {"upper_face_indices": 3}}, "FLAME.upper_face_indices", "path"),
    ({"FLAME": {"model_path": ["a.pkl", "b.pkl"]}}, "FLAME.model_path", "a string"),
    ({"DATA": {"datasets": {"A": {"train": {"x": 1}}}}}, "DATA.datasets.A.train", "JSON index path"),
    ({"DATA": {"datasets": {"A": {"test": ["a.json", 3]}}}}, "DATA.datasets.A.test", "JSON index path"),
    ({"DATA": {"datasets": {"A": {"flame_model": ["f.pkl"]}}}}, "DATA.datasets.A.flame_model", "FLAME model"),
    ({"DATA": {"datasets": {"A": {"format": ["vhap"]}}}}, "DATA.datasets.A.format", "'emoca' or 'vhap'"),
    ({"DATA": {"datasets": ["A", "B"]}}, "DATA.datasets", "mapping"),
    ({"TRAIN": {"amp": "yes"}}, "TRAIN.amp", "true or false"),
    ({"TRAIN": {"epochs": [1, 2]}}, "TRAIN.epochs", "a number"),
    ({"INFER": {"output_fps": [25]}}, "INFER.output_fps", "single value"),
    ({"INFER": {"checkpoint": {"path": "x"}}}, "INFER.checkpoint", "checkpoint path"),
])
def test_list_and_dict_keys_are_type_checked(tmp_path, data, key, expected):
    p = write_yaml(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert key in str(e.value) and expected in str(e.value) and p in str(e.value)


def test_valid_list_and_dict_values_pass(tmp_path):
    cfg = load_config(write_yaml(tmp_path, {
        "MODEL": {"audio_encoder_config": {"hidden_size": 32}},
        "FLAME": {"lip_indices": "lips.txt"},
        "DATA": {"datasets": {"A": {"train": ["a.json", "b.json"], "flame_model": "f.pkl"}}}}))
    assert cfg.MODEL.audio_encoder_config == {"hidden_size": 32}
    assert cfg.DATA.datasets.A.train == ["a.json", "b.json"]


# ---- values no one checked ----------------------------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


def test_yaml_alias_bomb_and_recursive_alias_are_refused_before_expansion(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)  # 9^9 values from ~600 bytes
    t0 = time.time()
    with pytest.raises(ConfigError, match=r"bomb.yaml: the YAML stands for more than \d+ values"):
        load_config(str(bomb))
    assert time.time() - t0 < 10
    for text in ("TRAIN: &a [*a]\n", "DATA: &a {datasets: *a}\n"):
        (tmp_path / "rec.yaml").write_text(text)
        with pytest.raises(ConfigError, match=r"alias \*a refers to a value that contains it"):
            load_config(str(tmp_path / "rec.yaml"))
    (tmp_path / "deep.yaml").write_text("TRAIN: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested more than"):
        load_config(str(tmp_path / "deep.yaml"))
    (tmp_path / "bin.yaml").write_bytes(b"TRAIN:\n  lr: \xff\xfe\n")
    with pytest.raises(ConfigError, match="bin.yaml: not UTF-8"):
        load_config(str(tmp_path / "bin.yaml"))
    with pytest.raises(ConfigError, match="override TRAIN.lr="):  # the same limits for overrides
        load_config(DEMO_CFG, ["TRAIN.lr=" + BOMB.replace("\n", ", ").join("{}")])


@pytest.mark.parametrize("override, message", [
    ("TRAIN.batch_size=0", r"TRAIN.batch_size is 0; expected a whole number in \[1, 4096\]"),
    ("DATA.max_frames=-1", r"DATA.max_frames is -1; expected a whole number in \[0, "),
    ("TRAIN.lr=nan", r"TRAIN.lr is nan; expected a number"),
    ("TRAIN.epochs=2.5", r"TRAIN.epochs is 2.5; expected a whole number"),
    ("INFER.window_seconds=.inf", r"INFER.window_seconds is inf"),
    ("INFER.attention_window=nan", r"INFER.attention_window is nan"),
    ("INFER.output_fps=.inf", r"INFER.output_fps is inf"),
    ("DATA.datasets.MEAD_VHAP.fps=.nan", r"DATA.datasets.MEAD_VHAP.fps is nan"),
    ("DATA.target_fps=1e-320", r"DATA.target_fps is 1e-320"),
    ("MODEL.n_head=3", r"MODEL.feature_dim \(64\) must be a multiple of MODEL.n_head \(3\)"),
    ("TRAIN.seed=-1", r"TRAIN.seed is -1"),
    ("MODEL.encoder_block_frames=-2", r"MODEL.encoder_block_frames is -2; expected a whole number"),
    ("MODEL.encoder_lookahead_frames=3", r"MODEL.encoder_lookahead_frames \(3\) applies to an encoder trained for "
                                         r"streaming: set MODEL.encoder_block_frames > 0"),
])
def test_numeric_config_values_are_range_checked_with_the_key_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEMO_CFG, [override])
