"""What a result holds has one home, main/results/formats.py ``ARRAYS``: the writer's files, the files of a
single-audio result and the disk estimate follow the table, and no other module names an array."""
import ast
import os

import numpy as np

from main.results.formats import ARRAY_FILES, ARRAYS, arrays_bytes, sample_arrays
from main.results.layout import SINGLE_FILES, sample_bytes
from main.results.reader import META
from main.results.writer import write_sample
from tests.test_structure import House

HOME = "main/results/formats.py"
LIBRARY = ("main", "models", "dataset", "utils", "loss", "scripts")


def test_writer_files_and_disk_estimate_follow_the_table(tmp_path):
    t, v = 9, 5
    arrays = sample_arrays(np.random.default_rng(0).normal(size=(t, 51)), np.ones(300), np.ones(128))
    assert list(arrays) == list(ARRAYS) and all(a.shape == (t, ARRAYS[k].width) for k, a in arrays.items())
    assert all(a.dtype == np.float32 for a in arrays.values())
    write_sample(str(tmp_path / "v"), str(tmp_path / "c"), np.zeros((t, v, 3), np.float32), arrays, {"n_frames": t})
    assert sorted(os.listdir(tmp_path / "c")) == sorted([*ARRAY_FILES, META])
    written = sum(os.path.getsize(tmp_path / "c" / f) for f in ARRAY_FILES)
    assert arrays_bytes(t) == written
    frames = sum(os.path.getsize(tmp_path / "v" / f) for f in os.listdir(tmp_path / "v"))
    assert sample_bytes(t, v) >= frames + written
    assert set(ARRAY_FILES) <= set(SINGLE_FILES)


def _code_constants(tree: ast.AST):
    """Constants that are not docstrings (strings, f-string parts, numbers)."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in docs]


def second_homes(house: House) -> list[str]:
    """Modules outside the home whose code names an array the model does not make itself (motion is also a
    batch key, and evaluation reads motion.npy) or the 287 layout's width."""
    names = {k for k in ARRAYS if k != "motion"}
    out = []
    for m, p in house.paths.items():
        if p == HOME or m.split(".")[0] not in LIBRARY:
            continue
        for c in _code_constants(house.trees[m]):
            if (isinstance(c.value, str) and any(n in c.value for n in names)) or \
                    (type(c.value) is int and c.value == ARRAYS["coeffs287"].width):
                out.append(f"{p}:{c.lineno}: {c.value!r}")
    return sorted(out)


def test_no_second_home_names_the_arrays():
    assert second_homes(House()) == []


def test_a_second_home_is_found(tmp_path):
    (tmp_path / "main").mkdir()
    (tmp_path / "main" / "pipeline.py").write_text('"""writes coeffs287.npy"""\nFILES = ("coeffs287.npy",)\nN = 287\n')
    os.system(f"git init -q {tmp_path}")
    assert second_homes(House(str(tmp_path))) == ["main/pipeline.py:2: 'coeffs287.npy'", "main/pipeline.py:3: 287"]
