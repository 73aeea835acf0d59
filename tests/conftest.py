"""Shared fixtures: one copy of the synthetic demo data per test session."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """``scripts/make_demo_data.py --out <tmp> --seed 0``, written once and shared (read-only use)."""
    out = tmp_path_factory.mktemp("demo_data")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_demo_data.py"), "--out", str(out),
                    "--seed", "0"], check=True, cwd=ROOT, capture_output=True)
    return str(out)
