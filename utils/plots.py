"""Figures written to files: matplotlib on its file-only backend (Agg, no display needed), imported
only when a plot is asked for, so runs without plots do not need matplotlib."""
from __future__ import annotations

import os


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str, dpi: int = 100) -> str:
    """Lay ``fig`` out, write it to ``path`` (its folder made) and close it; returns ``path``."""
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
