"""The epoch loop: teacher-forced training steps, validation, checkpoints, resume.

One ``Trainer`` owns the model, optimizer, AMP scaler and the run folder. ``main/train.py`` builds
the pieces (config -> datasets -> model) and calls ``Trainer.fit()``. Under DDP every rank trains on
its shard; rank 0 alone validates, logs and writes files.
"""
from __future__ import annotations

import math
import os
import signal
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from dataset.styles import pick_condition_style
from loss.loss import motion_vertex_loss
from models.checkpoint import check_state_dict, check_training_state, load_checkpoint, plain_values, save_checkpoint
from models.flame_regions import lip_split, region_indices
from utils.config import flame_region_paths
from utils.config_schema import SAMPLING_MODES
from utils.errors import CheckpointError, Interrupted, UserError
from utils.runtime import seed_everything


class TrainingDiverged(UserError, FloatingPointError):
    """The training loss became NaN or infinite: reported as one line that says what to do."""


def group_by_flame(datasets: list[str], flame_of: dict) -> list[tuple]:
    """Batch rows grouped by the FLAME model of their dataset: [(flame, row indices), ...]."""
    groups: dict[int, tuple] = {}
    for row, name in enumerate(datasets):
        flame = flame_of[name]
        groups.setdefault(id(flame), (flame, []))[1].append(row)
    return list(groups.values())


def batch_loss(pred, batch, flame_of, velocity_weight=0.0, lip_weight=0.0, lips_of=None):
    """Vertex loss of a batch whose rows may come from datasets with different FLAME models.

    pred (B,T,51) -> (loss, per-sample loss (B,)). As in motion_vertex_loss, the loss is a mean over
    all valid frames of the batch (every frame weighs the same, whatever its clip's length).
    ``lips_of``: {id(flame): (upper, lower) lip vertex ids} for the lip-aperture term."""
    per_sample = torch.zeros(pred.shape[0], device=pred.device)
    for flame, rows in group_by_flame(batch["dataset"], flame_of):
        idx = torch.as_tensor(rows, device=pred.device)
        _, ps = motion_vertex_loss(pred[idx].float(), batch["motion"][idx], batch["motion_mask"][idx],
                                   flame, batch["shape"][idx], velocity_weight,
                                   lip_weight=lip_weight, lips=(lips_of or {}).get(id(flame)))
        per_sample = per_sample.index_put((idx,), ps)
    frames = batch["motion_mask"].sum(1).to(per_sample.dtype)
    return (per_sample * frames).sum() / frames.sum().clamp(min=1), per_sample


def lip_vertices(cfg, flames, device) -> dict:
    """{id(flame): (upper, lower) lip vertex ids (long tensors)} from the config's lip region, split on
    each FLAME model's template (the lip-aperture loss term)."""
    paths = flame_region_paths(cfg)
    lip_idx = region_indices(**paths)[0]
    out = {}
    for flame in flames:
        try:
            upper, lower = lip_split(flame.v_template.detach().cpu().numpy(), lip_idx)
        except ValueError as e:
            where = (f"FLAME.lip_indices ({paths['lip_indices']})" if paths["lip_indices"]
                     else f"the 'lips' region of FLAME.masks_path ({paths['masks_path']})")
            raise UserError(f"TRAIN.lip_weight={cfg.TRAIN.lip_weight} needs lip vertices above and below the mouth "
                            f"centre; {where} has none on one side ({e})") from None
        out[id(flame)] = (torch.as_tensor(upper, device=device), torch.as_tensor(lower, device=device))
    return out


def to_device(batch: dict, device, untrained_style: int) -> dict:
    """Tensors to the device. Speakers outside the style classes (style -1: a validation speaker not
    seen in training, or one left out by DATA.train_subjects) are conditioned on ``untrained_style``,
    the index of the style inference gives them (dataset/styles.py ``pick_condition_style``), so the
    validation loss that picks best_model.pth scores what inference will write."""
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    out["style"] = torch.where(out["style"] < 0, untrained_style, out["style"])
    return out


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of one rank's epoch. Every epoch reseeds python, numpy and torch (CPU and CUDA) from
    (TRAIN.seed, rank, epoch), so an epoch's crops and dropout masks depend on nothing that came before
    it: a run resumed at an epoch boundary continues exactly as an uninterrupted one, on every rank,
    with no RNG state to save (rank 0 alone writes checkpoints and could only save its own)."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(epoch)]).generate_state(1)[0])


class Trainer:
    def __init__(self, cfg, model, train_loader, val_loader, flame_of, styles, device, logger,
                 rank=0, world_size=1, writer=None):
        self.cfg, self.model, self.device, self.log = cfg, model, device, logger
        self.train_loader, self.val_loader = train_loader, val_loader
        self.flame_of, self.styles = flame_of, styles
        self.lips_of = lip_vertices(cfg, flame_of.values(), device) if cfg.TRAIN.lip_weight else None
        self.untrained_style = styles.index(pick_condition_style(cfg, styles))  # a bad name fails here, at start
        self.rank, self.world_size, self.writer = rank, world_size, writer
        self.run_dir = cfg.TRAIN.save_path
        self.raw_model = model.module if hasattr(model, "module") else model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.TRAIN.lr)
        self.use_amp = bool(cfg.TRAIN.amp) and device.type == "cuda"
        if cfg.TRAIN.amp and not self.use_amp:
            logger.warning("TRAIN.amp=true is only used on CUDA; training in float32 on %s", device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.epoch, self.step, self.best_val = 0, 0, math.inf
        self.saved_epoch = None  # epoch held by last.pth, for the how-to-resume line after an interrupt
        self.validating = False

    # ----------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {"model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step,
                "best_val": self.best_val, "styles": list(self.styles),
                "config": self.cfg.to_dict(),
                # the wav2vec2 architecture: inference builds it without importing transformers
                "audio_encoder_config": plain_values(self.raw_model.audio_encoder.model.config.to_dict())}

    def save(self, name: str):
        if self.rank == 0:
            save_checkpoint(self.state(), os.path.join(self.run_dir, name))
        if name == "last.pth":
            self.saved_epoch = self.epoch

    def resume(self, path: str):
        ckpt = load_checkpoint(path, "TRAIN.resume checkpoint")  # safe: data only, layout checked
        check_training_state(ckpt, path)
        if list(ckpt["styles"]) != list(self.styles):
            raise CheckpointError(f"{path}: checkpoint styles {ckpt['styles']} differ from this config's "
                                  f"training styles {self.styles}; resume with the same data")
        check_state_dict(ckpt["model"], self.raw_model, path)
        self.raw_model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step, self.best_val = ckpt["epoch"], ckpt["step"], ckpt["best_val"]
        self.saved_epoch = self.epoch
        self.log.info("resumed from %s at epoch %d (step %d, best val %.6g)", path, self.epoch, self.step,
                      self.best_val)

    # ----------------------------------------------------------------- loops
    def sampling_prob(self, progress: float) -> float:
        """Probability of feeding the model's own previous frame (parallel_sampling, scheduled_rollout)
        at ``progress`` epochs into training (epoch + fraction of its batches): 0 until
        TRAIN.sampling_start_epoch, then a linear ramp to TRAIN.sampling_max over sampling_warmup_epochs.
        A function of the epoch and batch index alone, so a resumed run follows the same schedule."""
        cfg = self.cfg.TRAIN
        if cfg.mode not in SAMPLING_MODES:
            return 0.0
        ramp = progress - cfg.sampling_start_epoch
        if ramp < 0:
            return 0.0
        ramp = ramp / cfg.sampling_warmup_epochs if cfg.sampling_warmup_epochs > 0 else 1.0
        return float(cfg.sampling_max * min(1.0, ramp))

    def train_epoch(self) -> float:
        cfg = self.cfg.TRAIN
        seed_everything(epoch_seed(cfg.seed, self.rank, self.epoch))
        self.model.train()
        sampler = self.train_loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        accum = max(1, int(cfg.grad_accum))
        n_batches = len(self.train_loader)
        if cfg.max_steps_per_epoch:
            n_batches = min(n_batches, int(cfg.max_steps_per_epoch) * accum)
        total, count = 0.0, 0
        bar = tqdm(total=n_batches, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=self.rank != 0,
                   leave=False, dynamic_ncols=True)
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(self.train_loader):
            if i >= n_batches:
                break
            batch = to_device(batch, self.device, self.untrained_style)
            boundary = (i + 1) % accum == 0 or i + 1 == n_batches
            # DDP all-reduces gradients only on the step that updates the weights
            sync = self.model.no_sync() if (self.world_size > 1 and not boundary) else nullcontext()
            with sync:
                with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
                    pred = self.model(batch["audio"], batch["motion"], batch["style"], batch["motion_mask"],
                                      batch["audio_mask"], mode=cfg.mode,
                                      sampling_prob=self.sampling_prob(self.epoch + i / n_batches),
                                      passes=cfg.sampling_passes, input_noise=cfg.input_noise,
                                      rollout_steps=cfg.rollout_steps)
                loss, _ = batch_loss(pred, batch, self.flame_of, cfg.velocity_weight, cfg.lip_weight, self.lips_of)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"non-finite training loss ({loss.item()}) at epoch {self.epoch + 1}, batch {i}, samples "
                        f"{batch['sample_id']}; no weights were updated with it and last.pth holds the last "
                        f"complete epoch ({self.epoch}). Check those samples (python -m main.check_data), or lower "
                        f"TRAIN.lr (now {cfg.lr:g}), then continue with TRAIN.resume=true")
                self.scaler.scale(loss / accum).backward()
            if boundary:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self.writer is not None:
                    self.writer.add_scalar("train/loss", loss.item(), self.step)
                if self.step % cfg.log_every == 0:
                    self.log.info("epoch %d step %d loss %.6g", self.epoch + 1, self.step, loss.item())
            total += loss.item()
            count += 1
            bar.set_postfix(loss=f"{loss.item():.3g}")
            bar.update()
        bar.close()
        return total / max(count, 1)

    @torch.no_grad()
    def validation_losses(self) -> dict:
        """Vertex loss on the validation split, teacher-forced and free-running (KV-cached generation,
        which is what inference does). The model is selected on the free-running loss."""
        model = self.raw_model
        model.eval()
        sums = {"val/teacher_forced": 0.0, "val/generated": 0.0}
        n = 0
        for batch in self.val_loader:
            batch = to_device(batch, self.device, self.untrained_style)
            pred_tf = model(batch["audio"], batch["motion"], batch["style"], batch["motion_mask"],
                            batch["audio_mask"])
            pred_gen = model.generate(batch["audio"], batch["style"], batch["motion"].shape[1],
                                      audio_mask=batch["audio_mask"])
            b = pred_tf.shape[0]
            sums["val/teacher_forced"] += batch_loss(pred_tf, batch, self.flame_of)[0].item() * b
            sums["val/generated"] += batch_loss(pred_gen, batch, self.flame_of)[0].item() * b
            n += b
        return {k: v / max(n, 1) for k, v in sums.items()}

    def fit(self):
        """Train to TRAIN.epochs. SIGINT/SIGTERM (Interrupted, see utils/errors.py) stop it at once: the
        epoch in progress is dropped, last.pth (written whole or not at all) keeps the last complete
        epoch, and the exception's message says how to continue."""
        try:
            self._fit()
        except (Interrupted, KeyboardInterrupt) as e:
            signum = getattr(e, "signum", 2)
            raise Interrupted(signum, self.resume_hint(signum)) from None

    def resume_hint(self, signum: int) -> str:
        # validation runs after the epoch counter moved on: it belongs to the epoch just trained
        doing = f"in the validation of epoch {self.epoch}" if self.validating else f"at epoch {self.epoch + 1}"
        where = f"interrupted ({signal.Signals(signum).name}) {doing} step {self.step}"
        if self.saved_epoch is None:
            return f"{where}; no epoch was complete, nothing saved: start again with TRAIN.overwrite=true"
        return (f"{where}; last complete epoch ({self.saved_epoch}) saved in "
                f"{os.path.join(self.run_dir, 'last.pth')}; continue with TRAIN.resume=true")

    def _fit(self):
        cfg = self.cfg.TRAIN
        if self.epoch >= cfg.epochs:
            self.log.info("nothing to do: run already at epoch %d of %d", self.epoch, cfg.epochs)
        while self.epoch < cfg.epochs:
            t0 = time.time()
            train_loss = self.train_epoch()
            train_s = time.time() - t0
            self.epoch += 1
            msg = f"epoch {self.epoch}/{cfg.epochs} train loss {train_loss:.6g}"
            if cfg.mode in SAMPLING_MODES:
                msg += f" (sampling p {self.sampling_prob(self.epoch):.3g})"
            last = self.epoch == cfg.epochs
            if self.rank == 0:
                if self.writer is not None:
                    self.writer.add_scalar("train/epoch_loss", train_loss, self.epoch)
                if self.val_loader is not None and (self.epoch % max(1, cfg.val_every) == 0 or last):
                    self.validating = True
                    val = self.validation_losses()
                    self.validating = False
                    score = val["val/generated"]
                    msg += " | " + " ".join(f"{k.split('/')[1]} {v:.6g}" for k, v in val.items())
                    if self.writer is not None:
                        for k, v in val.items():
                            self.writer.add_scalar(k, v, self.epoch)
                elif self.val_loader is None:
                    score = train_loss  # no validation split: keep the best training loss
                else:
                    score = None
                if score is not None and score < self.best_val:
                    self.best_val = score
                    self.save("best_model.pth")
                    msg += " (best)"
                msg += f" | {time.time() - t0:.1f}s ({train_s:.1f}s training)"
                self.log.info(msg)
            self.save("last.pth")
            if self.world_size > 1:
                dist.barrier()
        if self.writer is not None:
            self.writer.flush()
        if self.world_size > 1:
            self.check_ranks_agree()

    def check_ranks_agree(self):
        """DDP keeps replicas identical; a cheap all-gathered checksum proves it in the log."""
        flat = torch.cat([p.detach().float().reshape(-1) for p in self.raw_model.parameters()])
        mine = torch.stack([flat.sum(), (flat * flat).sum()]).double().to(self.device)
        gathered = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine)
        sums = [tuple(g.tolist()) for g in gathered]
        same = all(s == sums[0] for s in sums)
        self.log.info("parameter checksums on %d ranks: %s -> %s", self.world_size,
                      ", ".join(f"{s[0]:.10g}/{s[1]:.10g}" for s in sums), "identical" if same else "DIFFERENT")
        if not same:
            raise RuntimeError("DDP ranks ended with different parameters")
