"""The style rule, one home for training and inference: the style classes (``style_classes``) and the
style a speaker gets (its own when trained, else ``INFER.condition_style`` or the first training style).
"""
from __future__ import annotations

import logging

from dataset.index import split_refs
from utils.errors import DataError, InferenceError

log = logging.getLogger("inference")


def style_classes(cfg) -> list[str]:
    """Style embedding classes: ``DATA.train_subjects`` if set, else the sorted training speakers."""
    if cfg.DATA.train_subjects:
        return [str(s) for s in cfg.DATA.train_subjects]
    speakers = sorted({r.speaker for r in split_refs(cfg, "train", problems=[])})
    if not speakers:
        raise DataError("no training speakers: no readable entries in the train JSONs of DATA.datasets "
                        "(run python -m main.check_data --config <cfg> to see why) and DATA.train_subjects "
                        "is not set")
    return speakers


def pick_condition_style(cfg, styles: list[str]) -> str:
    """The style of a speaker the model was not trained on: INFER.condition_style (checked) or the
    first training style."""
    name = cfg.INFER.condition_style
    if name is None:
        return styles[0]
    if str(name) not in styles:
        raise InferenceError(f"INFER.condition_style is '{name}', which is not a trained style; trained "
                             f"styles: {', '.join(styles)}")
    return str(name)


def style_for(cfg, styles: list[str], speaker: str) -> str:
    """A test speaker's own style when it was trained, else ``pick_condition_style``."""
    return speaker if speaker in styles else pick_condition_style(cfg, styles)


def choose_style(cfg, styles: list[str], style: str | None, logger: logging.Logger | None = None) -> str:
    """Single-audio and streaming mode's ``--style``: checked, or ``pick_condition_style``."""
    if style is None:
        style = pick_condition_style(cfg, styles)
        (logger or log).info("no --style given: conditioning on '%s' (trained styles: %s)", style, ", ".join(styles))
    elif style not in styles:
        raise InferenceError(f"--style '{style}' is not a trained style; trained styles: {', '.join(styles)}")
    return style
