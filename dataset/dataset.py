"""The torch Dataset of one split (audio, motion) pairs with training crops, and the padded batches.

The samples come from the JSON indices (dataset/index.py), checked once at construction
(dataset/split_check.py); one sample is loaded by ``load_item`` (dataset/data_item.py), or read from
the prepared-data store (dataset/store.py), which holds what ``load_item`` gives.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from dataset.data_item import load_item
from dataset.flame_params import DETAIL_DIM, fit_shape
from dataset.index import split_refs
from dataset.split_check import check_split
from dataset.store import StoreNotWritable, fallback_root, prepare, store_root, write_report
from utils.framing import framing_from_config

_log = logging.getLogger(__name__)


class FaceDataset(torch.utils.data.Dataset):
    """All samples of one split, every dataset concatenated.

    ``FaceDataset(cfg, split, styles, train=None)``: ``train`` (default ``split == "train"``) turns on
    random crops of ``DATA.max_frames`` frames (0 = whole clip), audio cut to the same window.
    ``check=True`` checks every sample at construction (``check_split``; ``DATA.bad_samples`` decides
    between raising and leaving bad samples out, the report is ``self.report``). ``prepared=True`` reads the
    samples from the prepared-data store under ``DATA.store_root`` (unless that is ``off``), preparing
    the samples that are missing there or whose files changed first, and validates from its records.
    Items are the same, bit for bit, either way.

    ``dataset[i]``, or ``dataset[(i, crop_seed)]`` as a ``CropSeeds`` sampler asks (the crop is then a
    function of that seed alone, whichever process loads it) -> dict(audio (N,) float32, motion (T,51)
    float32, shape (FLAME.n_shape,) float32 (zeros if the sample has none), detail (128,) float32 (the
    FLAME file's detail code, zeros if none), style long (index in ``styles``, -1 if not a training style),
    n_frames int T, sample_id,
    dataset, style_id, speaker, native_fps), N == T * samples_per_frame (640 at 16 kHz / 25 fps).
    The split holds only the speakers of ``DATA.<split>_subjects`` when that is set.
    """

    def __init__(self, cfg, split: str, styles: list[str], train: bool | None = None, check: bool = True,
                 log: logging.Logger | None = None, progress: bool = True,
                 prepared: bool = False):
        self.cfg, self.split = cfg, split
        self.train = split == "train" if train is None else bool(train)
        self.styles = list(styles)
        self._style_index = {s: i for i, s in enumerate(self.styles)}
        self.log = log or _log
        self.report = None
        self.stores = None
        root = store_root(cfg) if prepared else None
        if root is not None:
            self._open_stores(root, progress)
        elif check:
            self.report = check_split(cfg, split, self.log, progress=progress)
            self.refs = self.report["refs"]
        else:
            self.refs = split_refs(cfg, split)
        self._warned = set()
        self.framing = framing_from_config(cfg)
        self.hop = self.framing.samples_per_frame
        self.max_frames = int(cfg.DATA.max_frames or 0)
        self.n_shape = int(cfg.FLAME.n_shape)

    def _open_stores(self, root: str, progress: bool):
        """Validate the split from its prepared stores (one per dataset), preparing them first."""
        stores = {}

        def outcomes(name, refs):
            try:
                stores[name] = prepare(self.cfg, name, self.split, refs, root, self.log, progress)
            except StoreNotWritable:
                other = fallback_root(self.cfg)
                if other is None:
                    raise
                # the default store in a read-only data root is out of date: prepare a copy beside the run
                self.log.info("the prepared-data store in %s is not up to date and cannot be written: "
                              "preparing %s/%s in %s", root, name, self.split, other)
                stores[name] = prepare(self.cfg, name, self.split, refs, other, self.log, progress)
            return [stores[name].outcome(r) for r in refs]

        self.report = check_split(self.cfg, self.split, self.log, progress=progress, outcomes=outcomes)
        for name, store in stores.items():
            write_report(store, self.report["datasets"][name])
        self.refs = self.report["refs"]
        self.stores = [stores[r.dataset] for r in self.refs]

    def __len__(self):
        return len(self.refs)

    def style_index(self, speaker: str) -> int:
        return self._style_index.get(speaker, -1)

    def _load(self, i: int) -> dict:
        ref = self.refs[i]
        # Mismatch warnings were already reported by validation; otherwise report each sample once.
        log = None if (self.report is not None or ref.sample_id in self._warned) else self.log
        self._warned.add(ref.sample_id)
        return load_item(ref, self.framing, self.cfg.DATA.max_av_diff, log)

    def __getitem__(self, key) -> dict:
        i, seed = key if isinstance(key, tuple) else (key, None)
        ref = self.refs[i]
        if self.stores is None:
            item = self._load(i)
            s, t = self._window(item["motion"].shape[0], seed)
            audio, motion = item["audio"][s * self.hop:(s + t) * self.hop], item["motion"][s:s + t]
            shape = fit_shape(item["shape"], self.n_shape)
            detail = item["detail"] if item["detail"] is not None else np.zeros(DETAIL_DIM, np.float32)
        else:
            audio, motion, shape, detail = self.stores[i].arrays(ref)
            s, t = self._window(motion.shape[0], seed)
            audio, motion = audio[s * self.hop:(s + t) * self.hop], motion[s:s + t]
        return {
            "audio": torch.from_numpy(np.ascontiguousarray(audio)),
            "motion": torch.from_numpy(np.ascontiguousarray(motion)),
            "shape": torch.from_numpy(shape),
            "detail": torch.from_numpy(detail),
            "style": torch.tensor(self.style_index(ref.speaker), dtype=torch.long),
            "n_frames": t,
            "sample_id": ref.sample_id,
            "dataset": ref.dataset,
            "style_id": ref.style_id,
            "speaker": ref.speaker,
            "native_fps": ref.fps,
        }


    def _window(self, frames: int, seed) -> tuple[int, int]:
        """(first frame, frames) of the item: the whole sample, or in training a random crop of
        DATA.max_frames, drawn from ``seed`` or, when indexed without one, torch's global RNG."""
        if not (self.train and self.max_frames > 0 and frames > self.max_frames):
            return 0, frames
        starts = frames - self.max_frames + 1
        if seed is None:
            return int(torch.randint(0, starts, (1,)).item()), self.max_frames
        return int(np.random.default_rng(seed).integers(starts)), self.max_frames


def crop_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s training crop in ``epoch``: a function of these three alone."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


class CropSeeds(torch.utils.data.Sampler):
    """A sampler of sample indices (``DistributedSampler``) that yields ``(index, crop_seed)`` instead.

    The seeds are made in the main process, where ``set_epoch`` (forwarded to the wrapped sampler)
    is called, so a crop does not depend on which loader process reads the sample, how many there
    are, whether they persist across epochs, or what they loaded before: training gives the same
    batches with any ``DATA.num_workers``, and a resumed run the same as an uninterrupted one.
    """

    def __init__(self, sampler, seed: int):
        super().__init__()
        self.sampler, self.seed, self.epoch = sampler, int(seed), 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        for i in self.sampler:
            yield i, crop_seed(self.seed, self.epoch, i)

    def __len__(self):
        return len(self.sampler)


def pad_batch(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences (L_b, ...) right-padded with zeros to the longest -> (B,Lmax,...) and a (B,Lmax) bool mask,
    True on real entries (the one padding rule of training batches and batched inference)."""
    l_max = max(int(x.shape[0]) for x in seqs)
    out = seqs[0].new_zeros((len(seqs), l_max, *seqs[0].shape[1:]))
    mask = torch.zeros(len(seqs), l_max, dtype=torch.bool)
    for i, x in enumerate(seqs):
        out[i, :x.shape[0]] = x
        mask[i, :x.shape[0]] = True
    return out, mask


def collate(batch: list[dict]) -> dict:
    """Pad a list of items to the longest one.

    Returns dict(audio (B,Nmax) float32, audio_mask (B,Nmax) bool, motion (B,Tmax,51) float32,
    motion_mask (B,Tmax) bool, shape (B,S), style (B,) long, n_frames (B,) long, and lists sample_id,
    dataset, style_id, speaker, native_fps). Masks are True on real samples/frames; padding is zero.
    """
    audio, audio_mask = pad_batch([x["audio"].float() for x in batch])
    motion, motion_mask = pad_batch([x["motion"].float() for x in batch])
    out = {
        "audio": audio, "audio_mask": audio_mask, "motion": motion, "motion_mask": motion_mask,
        "shape": torch.stack([x["shape"] for x in batch]),
        "style": torch.stack([torch.as_tensor(x["style"], dtype=torch.long) for x in batch]),
        "n_frames": torch.tensor([int(x["n_frames"]) for x in batch], dtype=torch.long),
    }
    for k in ("sample_id", "dataset", "style_id", "speaker", "native_fps"):
        out[k] = [x[k] for x in batch]
    return out
