"""Section loader: what the training data loader delivers, from the source files and from the prepared-data
store (dataset/store.py), on files shaped like the real ones, written into a temporary folder:

- ``clips`` MEAD-like samples of 3-8 s: 48 kHz stereo 16-bit wav, VHAP ``tracked_flame_params`` npz with
  every key VHAP writes (48 MB ``tex_extra``, ``static_offset`` (1,5143,3), ``dynamic_offset`` (T,5143,3)).
  ``frames_per_s``: motion frames per second of ``FaceDataset`` items in one process (the work of one
  loader worker; training crops of DATA.max_frames, seeded as training seeds them), best of ``repeat``
  passes over the clips after one warm-up pass (the files are in the page cache either way);
- a 20,000-sample index: start-up (``style_classes`` + the train ``FaceDataset`` with its validation,
  in a fresh interpreter, imports excluded) from the source files (every run decodes every sample), and
  from the store on the first run (the store prepared) and the second (the store in place). Its samples are
  0.4 s clips whose files are hard links to 8 distinct 0.4 s clips of
  the same formats (48 kHz stereo wav, VHAP npz with every key incl. the 48 MB ``tex_extra``): each
  path is its own sample to the store (known by its path; hard links share one stat signature, so
  each distinct file is hashed once) and is decoded on the first run;
- memory of a fresh interpreter that builds the index of N samples from the store (second run) and
  then reads ``reads`` random training items, for N = 2,000 and 20,000: RSS after the index, peak RSS
  (VmHWM) while building it, and peak while reading (VmHWM reset through /proc/self/clear_refs), in
  MB above the RSS after imports; what reading adds to the index should not grow with N.

Source files are dated 100 s back, as data on disk is, and the run waits until their ctime (which cannot be
set back) is older than the 2 s within which the store compares a file by content at the next run too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import soundfile as sf
import yaml

from dataset.store_records import RACY_SECONDS
from scripts.bench.common import ROOT, speech_like
from utils.framing import WAV2VEC2_SAMPLE_RATE

N_INDEX = 20_000
DISTINCT = 8


def _write_clip(folder: str, name: str, seconds: float, seed: int) -> tuple[str, str]:
    """A 48 kHz stereo wav and a VHAP npz of ``seconds`` (25 fps) -> their paths relative to ``folder``."""
    from tests.test_tracker_formats import vhap_export  # the file VHAP's save_result writes

    t = int(round(seconds * 25))
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    mono = np.interp(np.arange(int(seconds * 48000)) / (48000 / WAV2VEC2_SAMPLE_RATE),
                     np.arange(int(seconds * WAV2VEC2_SAMPLE_RATE)),
                     speech_like(seconds, seed)).astype(np.float32)
    wav = os.path.join(name, "audio.wav")
    sf.write(os.path.join(folder, wav), np.stack([mono, 0.9 * mono], 1) * 0.5, 48000, subtype="PCM_16")
    npz = os.path.join(name, "tracked_flame_params_30.npz")
    np.savez(os.path.join(folder, npz), **vhap_export(t, seed))
    return wav, npz


def _entry(wav: str, npz: str, speaker: str) -> dict:
    return {"audio_path": wav, "flame_coeff_save_path": npz, "speaker_id": [speaker, "neutral"]}


def _age(folder: str, seconds: float = 100.0):
    t = time.time() - seconds
    for d, _, files in os.walk(folder):
        for f in files:
            os.utime(os.path.join(d, f), (t, t))


def write_data(tmp: str, clips: int) -> dict:
    """Data folders and configs: {"clips": cfg path, "index_<n>": cfg path per index size}."""
    root = os.path.join(tmp, "loader_data")
    rng = np.random.default_rng(0)
    mead = {f"clip{i}": _entry(*_write_clip(root, f"mead/{i}", float(rng.uniform(3, 8)), i), f"M{i % 4:03d}")
            for i in range(clips)}
    small = [_write_clip(root, f"small/{i}", 0.4, 100 + i) for i in range(DISTINCT)]
    index = {}
    for i in range(N_INDEX):
        wav, npz = small[i % DISTINCT]
        links = []
        for src in (wav, npz):
            dst = os.path.join("index", f"{i // 1000}", f"{i}{os.path.splitext(src)[1]}")
            os.makedirs(os.path.join(root, os.path.dirname(dst)), exist_ok=True)
            os.link(os.path.join(root, src), os.path.join(root, dst))
            links.append(dst)
        index[f"s{i}"] = _entry(*links, f"S{i % 40:03d}")
    jsons = {"clips": mead, "index_2000": dict(list(index.items())[:2000]), "index_20000": index}
    cfgs = {}
    for name, entries in jsons.items():
        with open(os.path.join(root, f"{name}.json"), "w") as f:
            json.dump(entries, f)
        cfg = {"DATA": {"data_root": root, "store_root": os.path.join(tmp, "loader_store"),
                        "datasets": {name: {"format": "vhap", "fps": 25, "train": f"{name}.json"}}}}
        cfgs[name] = os.path.join(root, f"{name}.yaml")
        with open(cfgs[name], "w") as f:
            yaml.safe_dump(cfg, f)
    _age(root)
    time.sleep(RACY_SECONDS)  # _age set every ctime to now: let them be as old as data on disk is
    return cfgs


def _probe(cfg_path: str, prepared: bool, reads: int) -> dict:
    """In a fresh interpreter: start-up time and memory of the train FaceDataset, then ``reads`` items."""
    from dataset.dataset import FaceDataset, crop_seed
    from dataset.styles import style_classes
    from utils.config import load_config

    def rss_mb(field="VmRSS"):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024

    cfg = load_config(cfg_path)
    base = rss_mb()
    t0 = time.perf_counter()
    data = FaceDataset(cfg, "train", style_classes(cfg), progress=False, prepared=prepared)
    startup = time.perf_counter() - t0
    index, startup_peak = rss_mb(), rss_mb("VmHWM")
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak (VmHWM) to the current RSS
        f.write("5")
    order = np.random.default_rng(0).integers(len(data), size=reads)
    t0, frames = time.perf_counter(), 0
    for k, i in enumerate(order):
        frames += data[(int(i), crop_seed(0, 0, k))]["n_frames"]
    return {"samples": len(data), "startup_s": startup, "rss_base_mb": base, "rss_index_mb": index,
            "startup_peak_mb": startup_peak, "reading_peak_mb": rss_mb("VmHWM"), "read_s": time.perf_counter() - t0,
            "frames": frames}


def _run_probe(cfg_path: str, prepared: bool, reads: int) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {ROOT!r}); from scripts.bench.loader import _probe; "
            f"print(json.dumps(_probe({cfg_path!r}, {prepared}, {reads})))")
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if res.returncode != 0:
        raise RuntimeError(f"loader probe failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _frames_per_s(cfg_path: str, prepared: bool, repeat: int) -> dict:
    """One process: items of every clip (training crops), best pass of ``repeat`` after a warm-up pass."""
    from dataset.dataset import FaceDataset, crop_seed
    from dataset.styles import style_classes
    from utils.config import load_config

    cfg = load_config(cfg_path)
    data = FaceDataset(cfg, "train", style_classes(cfg), progress=False, prepared=prepared)
    best, frames = float("inf"), 0
    for epoch in range(repeat + 1):
        t0 = time.perf_counter()
        frames = sum(data[(i, crop_seed(0, epoch, i))]["n_frames"] for i in range(len(data)))
        if epoch:
            best = min(best, time.perf_counter() - t0)
    return {"source": "store" if prepared else "files", "clips": len(data), "frames": frames, "seconds": best,
            "frames_per_s": frames / best}


def bench_loader(tmp: str, clips: int = 8, repeat: int = 3, reads: int = 2000) -> dict:
    t0 = time.perf_counter()
    cfgs = write_data(tmp, clips)
    written = time.perf_counter() - t0
    per_worker = [_frames_per_s(cfgs["clips"], prepared, repeat) for prepared in (False, True)]
    startup = []
    for run, prepared in (("source files (DATA.store_root=off), every run", False),
                          ("store: first run (prepared)", True), ("store: second run (in place)", True)):
        r = _run_probe(cfgs["index_20000"], prepared, 0)
        startup.append({"run": run, "samples": r["samples"], "startup_s": r["startup_s"]})
    memory = []
    _run_probe(cfgs["index_2000"], True, 0)  # prepare its store: the next run is a second run, as for 20,000
    for n in (2000, 20000):
        r = _run_probe(cfgs[f"index_{n}"], True, reads)
        memory.append({"samples": r["samples"], "reads": reads, "rss_after_imports_mb": r["rss_base_mb"],
                       "index_mb": r["rss_index_mb"] - r["rss_base_mb"],
                       "startup_peak_mb": r["startup_peak_mb"] - r["rss_base_mb"],
                       "reading_peak_mb": r["reading_peak_mb"] - r["rss_base_mb"],
                       "reading_adds_mb": r["reading_peak_mb"] - r["rss_index_mb"]})
    return {"data_written_s": written, "clips": clips, "max_frames": 300, "per_worker": per_worker,
            "startup": startup, "memory": memory,
            "targets": {"store_frames_per_s": 20000, "second_startup_s": 10.0}}


def print_loader(r: dict):
    from scripts.bench.common import table

    print(f"\n[loader] {r['clips']} MEAD-like clips (3-8 s, 48 kHz stereo wav, VHAP npz with every key), one "
          f"process, DATA.max_frames {r['max_frames']}; target from the store >= "
          f"{r['targets']['store_frames_per_s']} frames/s")
    print(table(r["per_worker"], ["source", "clips", "frames", "seconds", "frames_per_s"]))
    print(f"\nstart-up of a {N_INDEX}-sample index (0.4 s clips, hard links to {DISTINCT} distinct ones); target "
          f"second run <= {r['targets']['second_startup_s']:g} s")
    print(table(r["startup"], ["run", "samples", "startup_s"]))
    print("\nloader memory (MB above the RSS after imports): the index from the store (RSS after it, peak while "
          "building it), then random training items (peak while reading, and what reading adds to the index)")
    print(table(r["memory"], ["samples", "reads", "rss_after_imports_mb", "index_mb", "startup_peak_mb",
                              "reading_peak_mb", "reading_adds_mb"]))
