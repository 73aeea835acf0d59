"""The lip-sync report (main/evaluation/lipsync.py's checks): printed table, JSON with the definitions, and a PNG of
one clip's speech envelope and mouth opening over time above the pooled correlation against lag."""
from __future__ import annotations

import logging
import os

import numpy as np

from main.evaluation.lipsync_rules import CLOSED_SHARE, JITTER_HZ, STATIC_M, LipSyncError, runs
from main.results.reader import default_out_path
from utils.atomic import write_json
from utils.plots import pyplot, save_figure

log = logging.getLogger("lipsync")


DEFINITIONS = {
    "lag_ms": "delay maximising corr(envelope[t], lip aperture[t+lag]); > 0: the mouth moves after the sound",
    "corr": "that maximum Pearson correlation (pooled: frame-weighted mean of the clips' curves)",
    "rest_open": "mean mouth opening (above the clip's most closed level) in silence / in speech",
    "rest_move": "mean frame-to-frame aperture change in silence / in speech (0: still in pauses)",
    "closure": "fraction of P/B/M phones during which the lips reach near-closed "
               f"(opening <= {CLOSED_SHARE} x the clip's 5-95% aperture range, phone +- one frame)",
    "closure_chance": "the closure fraction of the same windows slid over the clip's speech (untimed closures)",
    "jitter": f"share of the lip vertices' motion energy above {JITTER_HZ:g} Hz",
    "static": f"aperture range under {STATIC_M * 1000:g} mm: timing checks undefined",
}


def write_report(rep: dict, out: str, plot: bool = True) -> dict:
    """Print the table, write the JSON (and the PNG); returns the JSON-able report."""
    clean = {k: v for k, v in rep.items() if k != "clips"}
    clean["clips"] = [{k: v for k, v in c.items() if not k.startswith("_")} for c in rep["clips"]]
    clean["definitions"] = DEFINITIONS
    print(format_table(clean))
    if plot:
        clean["plot"] = plot_clip(rep, os.path.splitext(out)[0] + ".png")
    try:
        write_json(out, clean)
    except OSError as e:
        raise LipSyncError(f"cannot write {out}: {e.strerror or e}") from None
    log.info("wrote %s", out)
    return clean


def format_table(rep: dict) -> str:
    def f(x, fmt):
        return "static" if x == "static" else ("-" if x is None else format(x, fmt))

    rows = [f"{'clip':<44} {'frames':>6} {'lag ms':>7} {'corr':>6} {'r.open':>6} {'r.move':>6} {'closure':>9} "
            f"{'jitter':>7}"]
    for c in rep["clips"] + [dict(rep["overall"], clip="overall", static=rep["overall"]["n_static"] ==
                                  rep["overall"]["n_clips"])]:
        s = c["static"]
        clo = "static" if s else (f"{c['closure']:.2f}/{c['bilabials']}" if c["closure"] is not None else None)
        name = c["clip"] if len(c["clip"]) <= 44 else "..." + c["clip"][-41:]
        rows.append(f"{name:<44} {c['n_frames']:>6} {f('static' if s else c['lag_ms'], '7.0f'):>7} "
                    f"{f('static' if s else c['corr'], '6.3f'):>6} {f('static' if s else c['rest_open'], '6.3f'):>6} "
                    f"{f('static' if s else c['rest_move'], '6.3f'):>6} "
                    f"{f(clo, 's'):>9} {f(c['jitter'], '7.4f'):>7}")
    rows.append("(lag > 0: mouth after sound; r.open, r.move: opening, movement in silence / in speech; closure: P/B/M phones "
                "reaching near-closed / count; jitter: lip motion energy share above "
                f"{JITTER_HZ:g} Hz; static: the mouth does not move)")
    return "\n".join(rows)


def plot_clip(rep: dict, path: str) -> str | None:
    """Envelope and mouth opening over time for the longest moving clip, and the pooled lag curve."""
    moving = [c for c in rep["clips"] if "_plot" in c]
    if not moving:
        return None
    plt = pyplot()
    c = max(moving, key=lambda c: c["n_frames"])
    p, t = c["_plot"], np.arange(c["n_frames"]) / c["fps"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 6), gridspec_kw={"height_ratios": [2, 1]})
    ax.plot(t, p["env"], color="tab:blue", lw=1, label="speech envelope (dB)")
    ax.set_ylabel("envelope (dB)")
    for a, b in runs(p["silence"]):
        ax.axvspan(a / c["fps"], b / c["fps"], color="0.85", lw=0)
    for a, b in p["bilabials"]:
        ax.axvspan(a, b, color="tab:green", alpha=0.3, lw=0)
    tw = ax.twinx()
    tw.plot(t, 1000 * p["opening"], color="tab:red", lw=1.2, label="mouth opening (mm)")
    tw.axhline(1000 * p["threshold"], color="tab:red", ls=":", lw=0.8)
    tw.set_ylabel("mouth opening (mm)")
    timing = f"lag {c['lag_ms']:.0f} ms, corr {c['corr']:.2f}" if c["lag_ms"] is not None else "no lag found"
    ax.set_title(f"{c['clip']}: {timing} (grey: silence scored; green: P/B/M; dotted: near-closed)", fontsize=9)
    ax.set_xlabel("time (s)")
    curve = rep["overall"].get("lag_curve")
    if curve:
        ax2.plot(curve["lag_ms"], [np.nan if v is None else v for v in curve["corr"]], color="black")
        ax2.axvline(0, color="0.6", lw=0.8)
        ax2.set_xlabel("lag (ms; > 0: mouth after sound)")
        ax2.set_ylabel("pooled corr")
    return save_figure(fig, path)


def default_out(results: str) -> str:
    return default_out_path(results, "lipsync")
