"""``--html``: one self-contained page (``DIR/viewer.html``) that plays a result with its audio, works
offline (no CDN: a small WebGL 2 renderer is part of the page, main/exporting/viewer_page.html) and,
for a sample of the test split, shows three faces side by side and in sync:

- ground truth: the sample's FLAME file, found through the config (the dataset in meta.json, the sample
  id in the ``INFER.split`` JSON), made into vertices as inference's are (same FLAME model, shape and
  output frame rate);
- the prediction: the result itself;
- the mean-motion baseline: ``{INFER.output_root}/mean_baseline/{DATASET}/{STYLE_ID}``, the tree
  scripts/mean_baseline.py writes next to the model's (shown when complete).

A part that cannot be had is left out and the log says why. Open ``viewer.html#selftest`` to step
through every frame once and put the outcome in the page's title (what the browser test reads).
"""
from __future__ import annotations

import html
import json
import logging
import os

from dataset.data_item import load_item
from dataset.flame_params import fit_shape
from dataset.index import dataset_refs
from main.exporting.viewer_data import pack_sequences, wav_data_uri
from main.results.formats import to_output_fps
from main.results.layout import VIEWER_FILE, is_complete
from main.results.reader import is_inside, load_frames, read_meta
from utils.atomic import atomic_write
from utils.errors import UserError
from utils.framing import framing_from_config

log = logging.getLogger("export")

BASELINE = "mean_baseline"  # scripts/mean_baseline.py's INFER.exp_name
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "viewer_page.html")


def ground_truth(result, cfg):
    """(vertices (T,V,3), fps) of the result's test sample, or (None, why not)."""
    meta = result.meta
    dataset, split = meta.get("dataset"), cfg.INFER.split
    if dataset not in cfg.DATA.datasets:
        return None, "not a sample of a configured dataset"
    try:
        refs = [r for r in dataset_refs(cfg, dataset, split)
                if r.sample_id == meta.get("sample_id") and r.style_id == meta.get("style_id")]
        if not refs:
            return None, f"sample '{meta.get('sample_id')}' is not in {dataset}'s {split} split"
        framing = framing_from_config(cfg)
        item = load_item(refs[0], framing)
    except UserError as e:
        return None, str(e)
    motion = to_output_fps(item["motion"], result.fps, framing.fps)
    shape = fit_shape(item["shape"], cfg.FLAME.n_shape)
    return (result.flame.motion_to_vertices(motion, shape), result.fps), ""


def mean_baseline(result, cfg):
    """(vertices (T,V,3), fps) of the mean baseline's result for the same sample, or (None, why not)."""
    out_root, coeff_root = os.path.abspath(cfg.INFER.output_root), os.path.abspath(cfg.INFER.coeff_root)
    if not is_inside(result.vert_dir, out_root):
        return None, f"the result is not in the results tree {out_root}"
    parts = os.path.relpath(result.vert_dir, out_root).split(os.sep)
    if len(parts) < 3 or parts[0] == BASELINE:
        return None, "the result is not a model's sample in the results tree"
    vert_dir, meta_dir = os.path.join(out_root, BASELINE, *parts[-2:]), os.path.join(coeff_root, BASELINE, *parts[-2:])
    if not is_complete(vert_dir, meta_dir):
        return None, f"no complete result at {vert_dir} (scripts/mean_baseline.py writes it)"
    return (load_frames(vert_dir), float(read_meta(meta_dir).get("fps") or result.fps)), ""


def viewer_sequences(result, cfg) -> list[tuple[str, object, float]]:
    """[(label, vertices (T,V,3), fps)] in the page's order: ground truth, prediction, mean baseline."""
    seqs = []
    for label, find in (("ground truth", ground_truth), ("prediction", None), ("mean baseline", mean_baseline)):
        if find is None:
            seqs.append((label, result.vertices, result.fps))
            continue
        found, why = find(result, cfg)
        if found is None:
            log.info("viewer: no %s (%s)", label, why)
        elif found[0].shape[1:] != result.vertices.shape[1:]:
            log.warning("viewer: %s left out: %s vertices, the result has %s", label, found[0].shape[1:],
                        result.vertices.shape[1:])
        else:
            seqs.append((label, *found))
    return seqs


def viewer_page(data: dict) -> str:
    """The page's HTML around ``data`` (main/exporting/viewer_data.py ``pack_sequences`` plus audio, title)."""
    with open(PAGE, encoding="utf-8") as f:
        page = f.read()
    # "</" inside the JSON would end its <script> element
    return page.replace("__VIEWER_TITLE__", html.escape(data["title"])).replace(
        "__VIEWER_DATA__", json.dumps(data).replace("</", "<\\/"))


def export_viewer(result, cfg) -> str:
    """Write ``DIR/viewer.html``; returns its path."""
    seqs = viewer_sequences(result, cfg)
    data = pack_sequences(seqs, result.faces)
    data["audio"] = None
    if result.audio and os.path.isfile(result.audio):
        data["audio"] = wav_data_uri(result.audio)
    else:
        log.warning("viewer: audio %s not found: the page plays without sound", result.audio)
    data["title"] = f"{result.meta.get('sample_id', '')} {result.meta.get('style_id') or ''}".strip()
    page, path = viewer_page(data), result.out(VIEWER_FILE)

    def save(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page)
    atomic_write(path, save)
    log.info("wrote %s (%.1f MB): %s; %d frames at %g fps; packing error at most %.2g m", path,
             os.path.getsize(path) / 1e6, ", ".join(s[0] for s in seqs), len(result.vertices), result.fps,
             data["max_error"])
    return path
