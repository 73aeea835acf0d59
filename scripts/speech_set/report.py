"""Eye checks of the alignment: phone timings next to the energy envelope (printed), and plots."""
from __future__ import annotations

import os

import numpy as np

from main.evaluation.align import FRAME_S
from scripts.speech_set.alignment_checks import frame_db
from scripts.speech_set.visemes import LEAD_S, motion_signals
from utils.framing import WAV2VEC2_SAMPLE_RATE
from utils.plots import pyplot, save_figure


def print_alignment(prompt, audio, phones):
    """One line per phone: times, mean energy and a bar of it (speech should be loud, SIL quiet)."""
    db = frame_db(audio)
    peak = np.percentile(db, 95)
    print(f"\n[{prompt.voice}] {prompt.uid}: {prompt.text}")
    for p, t0, t1 in phones:
        seg = db[int(round(t0 / FRAME_S)):max(int(round(t1 / FRAME_S)), int(round(t0 / FRAME_S)) + 1)]
        rel = float(seg.mean() - peak) if len(seg) else -99.0
        bar = "#" * int(max(0, 40 + rel) / 2)
        print(f"  {p:4s} {t0:6.2f}-{t1:6.2f}  {rel:6.1f} dB  {bar}")


def plot_alignment(prompt, audio, phones, loud, path):
    """Energy envelope with phone boundaries and labels, and the jaw opening the phones give."""
    plt = pyplot()
    db = frame_db(audio)
    t = np.arange(len(db)) * FRAME_S
    tg, jaw, expr = motion_signals(phones, len(audio) / WAV2VEC2_SAMPLE_RATE, loud)
    fig, ax = plt.subplots(2, 1, figsize=(max(8, 2.2 * t[-1]), 5), sharex=True)
    ax[0].plot(t, db, lw=0.8)
    for p, t0, t1 in phones:
        ax[0].axvline(t0, color="k" if p == "SIL" else "r", lw=0.4)
        ax[0].text(0.5 * (t0 + t1), db.max() + 2, p, ha="center", fontsize=7, rotation=90)
    ax[0].set_ylabel("energy dB")
    ax[0].set_title(f"{prompt.voice}/{prompt.uid}: {prompt.text[:90]}", fontsize=8)
    ax[1].plot(tg, jaw, label="jaw openness")
    ax[1].plot(tg, expr[:, 6] / 2, label="lip press / 2")
    ax[1].plot(tg, expr[:, 1] / 2, label="rounding / 2")
    ax[1].set_xlabel(f"seconds (motion leads by {LEAD_S * 1000:.0f} ms)")
    ax[1].legend(fontsize=7)
    save_figure(fig, path, dpi=80)


def show_checks(checks, folder):
    os.makedirs(folder, exist_ok=True)
    for voice, items in checks.items():
        if voice == "n":
            continue
        for prompt, audio, phones, loud in items:
            print_alignment(prompt, audio, phones)
            plot_alignment(prompt, audio, phones, loud,
                           os.path.join(folder, f"{voice}_{prompt.uid.replace('/', '_')}.png"))
    print(f"\nalignment plots: {folder}/")
