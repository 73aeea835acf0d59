"""Property-based: arbitrary values thrown at the config loader (YAML files and SECTION.key=value
overrides) and at the inference / streaming flags end in success or one line naming what is wrong
(a UserError, or argparse's usage error), never another exception, a traceback or a hang.

Uses the ``hypothesis`` library: each test draws a few dozen inputs (strings, numbers including NaN,
infinities and huge values, YAML fragments with anchors and aliases) and, when one fails, shrinks it to
the smallest failing input. The example counts keep the file at about 20 s on 2 CPU cores.
"""
import os
import signal
from contextlib import contextmanager

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from utils.config import load_config
from utils.config_schema import DATASET_DEFAULTS, DEFAULTS
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CFG = os.path.join(ROOT, "config", "demo.yaml")
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

KEYS = [f"{s}.{k}" for s, keys in DEFAULTS.items() for k in keys if k != "datasets"] + \
       [f"DATA.datasets.MEAD_VHAP.{k}" for k in DATASET_DEFAULTS]

numbers = st.one_of(st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, -1, 1, 1e308, -0.0, 1e-320, 2**63]))
texts = st.one_of(numbers.map(repr), numbers.map(str),
                  st.sampled_from(["nan", ".nan", "inf", "-.inf", "1e400", "true", "null", "", "[]", "{}",
                                   "[1, 2]", "{a: 1}", "&a [*a]", "&a [1, *a]", "*b", "!!python/object:os.system",
                                   "'\\x00'", "a\x00b", "${HOME}", "${X:-1e9}", "- - - -", ": :", "[[[[[[["]),
                  st.text(max_size=20))


@contextmanager
def no_hang(seconds=20):
    """A hang becomes a test failure (SIGALRM), not a stuck test run."""
    def fail(*_):
        raise AssertionError(f"no answer within {seconds} s")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def one_line_or_success(call):
    with no_hang():
        try:
            return call()
        except UserError as e:
            assert "\n" not in str(e), str(e)
            return e


@settings(max_examples=150, **SETTINGS)
@given(st.lists(st.tuples(st.sampled_from(KEYS), texts), min_size=1, max_size=3))
def test_overrides_load_or_fail_with_one_line(pairs):
    one_line_or_success(lambda: load_config(DEMO_CFG, [f"{k}={v}" for k, v in pairs]))


yaml_values = st.recursive(st.one_of(numbers, st.text(max_size=8), st.booleans(), st.none()),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=8)


@settings(max_examples=60, **SETTINGS)
@given(st.dictionaries(st.sampled_from(KEYS), yaml_values, min_size=1, max_size=4))
def test_yaml_config_files_load_or_fail_with_one_line(tmp_path_factory, values):
    doc = {}
    for key, value in values.items():
        node, *path, last = key.split(".")
        d = doc.setdefault(node, {})
        for p in path:
            d = d.setdefault(p, {})
        d[last] = value
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    one_line_or_success(lambda: load_config(str(path)))


@settings(max_examples=60, **SETTINGS)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_arbitrary_text_as_config_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    one_line_or_success(lambda: load_config(str(path)))


@pytest.fixture(scope="module")
def tiny():
    from tests.conftest import tiny_model
    return tiny_model(weight_std=0.2).eval()


FLAGS = ["--chunk_ms", "--lookahead_ms", "--left_context_ms", "--warmup_ms"]


@settings(max_examples=120, **SETTINGS)
@given(st.lists(st.tuples(st.sampled_from(FLAGS), texts), max_size=4),
       st.lists(st.tuples(st.sampled_from([k for k in KEYS if k.startswith("INFER.")]), texts), max_size=2))
def test_streaming_flags_are_checked_before_anything_runs(tiny, flags, overrides):
    """What cli() checks before a model is loaded or a file is written: the flags parse, the config
    loads, the streaming settings and INFER values pass their ranges; whatever passes, the Streamer
    accepts."""
    from main.infer.session import check_infer_config, stream_settings
    from main.inference import parse_args
    from models.streaming import Streamer

    argv = ["--audio", "-", *[x for flag, value in flags for x in (flag, value)],
            *[f"{k}={v}" for k, v in overrides]]

    def run():
        args = parse_args(argv)
        cfg = load_config(DEMO_CFG, args.overrides)
        check_infer_config(cfg)
        Streamer(tiny, 0, **stream_settings(cfg, args))

    try:
        one_line_or_success(run)
    except SystemExit as e:  # argparse: a usage line and exit status 2 (e.g. --chunk_ms abc)
        assert e.code == 2
