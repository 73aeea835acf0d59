"""Rules with one home each, and a test that fails when a second one appears: the tracker formats
(utils/trackers.py), the streaming defaults (utils/config_schema.py), the sample rate (utils/framing.py)
and the file lock (utils/filelock.py). The arrays a result holds: tests/test_result_formats.py."""
import ast
import inspect
import subprocess

import numpy as np

from dataset.flame_params import load_motion
from models.streaming import STREAM_FLAGS, Streamer
from tests.test_structure import House
from utils.config import load_config
from utils.config_schema import DEFAULTS
from utils.framing import WAV2VEC2_SAMPLE_RATE
from utils.trackers import FORMATS

LIBRARY = ("main", "models", "dataset", "utils", "loss", "scripts")


def _code(house: House):
    """(path, node) of every library module's code, docstrings left out."""
    for m, p in house.paths.items():
        if m.split(".")[0] not in LIBRARY:
            continue
        tree = house.trees[m]
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        yield p, [n for n in ast.walk(tree) if not (isinstance(n, ast.Constant) and id(n) in docs)]


def format_lists(house: House) -> list[str]:
    """Collections (tuple, list, set, dict keys) or comparisons naming two or more tracker formats."""
    out = []
    for p, nodes in _code(house):
        for n in nodes:
            items = (n.elts if isinstance(n, (ast.Tuple, ast.List, ast.Set)) else
                     n.keys if isinstance(n, ast.Dict) else [])
            named = [c.value for c in items if isinstance(c, ast.Constant) and c.value in FORMATS]
            if len(named) >= 2 and p != "utils/trackers.py":
                out.append(f"{p}:{n.lineno}: {named}")
    return out


def stream_defaults(house: House) -> list[str]:
    """Parameters named like a streaming setting whose default is a number written in the code."""
    names = set(STREAM_FLAGS) | {"attention_window"}
    out = []
    for p, nodes in _code(house):
        for n in nodes:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = n.args
                pairs = list(zip(a.args[len(a.args) - len(a.defaults):], a.defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
                out += [f"{p}:{d.lineno}: {arg.arg}={d.value}" for arg, d in pairs if arg.arg in names
                        and isinstance(d, ast.Constant) and type(d.value) in (int, float)]
    return out


def sample_rates(house: House) -> list[str]:
    """The sample rate written as a number outside utils/framing.py."""
    return [f"{p}:{n.lineno}" for p, nodes in _code(house) if p != "utils/framing.py" for n in nodes
            if isinstance(n, ast.Constant) and type(n.value) in (int, float) and n.value == WAV2VEC2_SAMPLE_RATE]


def file_locks(house: House) -> list[str]:
    """Modules other than utils/filelock.py that import fcntl."""
    return [p for p, nodes in _code(house) if p != "utils/filelock.py" for n in nodes
            if isinstance(n, ast.Import) and any(a.name == "fcntl" for a in n.names)
            or isinstance(n, ast.ImportFrom) and n.module == "fcntl"]


def test_tracker_formats_have_one_home():
    assert format_lists(House()) == []


def test_a_new_tracker_format_is_one_row(tmp_path, monkeypatch):
    """A row in utils/trackers.py FORMATS is accepted by the config and decoded by the dataset layer."""
    monkeypatch.setitem(FORMATS, "spectre", {"expr": ("exp_spectre",), "jaw": (("jaw_spectre", 0),), "shape": ()})
    cfg = load_config(None, ["DATA.datasets.S.format=spectre", "DATA.datasets.S.train=s.json"])
    assert cfg.DATA.datasets.S.format == "spectre"
    expr, jaw = np.ones((10, 50), np.float32), np.full((10, 3), 0.5, np.float32)
    np.savez(tmp_path / "s.npz", exp_spectre=expr, jaw_spectre=jaw)
    np.testing.assert_allclose(load_motion(str(tmp_path / "s.npz"), "spectre", 25), np.concatenate([expr, jaw[:, :1]], 1))


def test_streaming_defaults_have_one_home():
    """The Streamer's Python API defaults are the config's INFER defaults, not numbers of its own."""
    assert stream_defaults(House()) == []
    params = inspect.signature(Streamer.__init__).parameters
    for flag, key in STREAM_FLAGS.items():
        assert params[flag].default == DEFAULTS["INFER"][key]
    assert params["attention_window"].default == (DEFAULTS["INFER"]["attention_window"] or None)


def test_sample_rate_and_file_lock_have_one_home():
    house = House()
    assert sample_rates(house) == []
    assert file_locks(house) == []


def test_a_second_home_is_found(tmp_path):
    (tmp_path / "main").mkdir()
    (tmp_path / "main" / "x.py").write_text(
        'import fcntl\nFORMATS = ("emoca", "vhap")\nSR = 16000\n'
        'def stream(chunk_ms=200, lookahead_ms=None):\n    """16000 in a docstring is prose"""\n')
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    house = House(str(tmp_path))
    assert format_lists(house) == ["main/x.py:2: ['emoca', 'vhap']"]
    assert sample_rates(house) == ["main/x.py:3"]
    assert stream_defaults(house) == ["main/x.py:4: chunk_ms=200"]
    assert file_locks(house) == ["main/x.py"]
