"""Training entry: config -> datasets -> model -> Trainer.fit().

    python train.py --config config/faceformer.yaml [SECTION.key=value ...]
    torchrun --nproc_per_node 4 train.py --config config/faceformer.yaml   # DDP (see train_faceformer.sh)
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import shutil
import sys

if __name__ == "__main__":  # run as a script: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from dataset.dataset import CropSeeds, FaceDataset, collate
from dataset.styles import style_classes
from main.train_eval_loop import Trainer
from models.faceformer import FaceFormer
from models.flame import load_flame
from utils.config import flame_path_for, load_config, save_config
from utils.disk import check_can_write
from utils.errors import ConfigError, UserError, run_reporting_user_errors
from utils.framing import framing_from_config
from utils.runtime import pick_device, seed_everything, setup_logger
from utils.scalar_log import ScalarLog


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train FaceFormer on FLAME motion.")
    p.add_argument("--config", default="config/faceformer.yaml")
    p.add_argument("overrides", nargs="*", help="SECTION.key=value, e.g. TRAIN.epochs=1")
    return p.parse_args(argv)


def init_distributed(cfg):
    """(rank, world_size, device). torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; nccl on GPU, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = str(cfg.TRAIN.device).startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return rank, world_size, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")


def prepare_run_dir(cfg, rank):
    """Refuse to start afresh over a previous run: resume it or overwrite it explicitly."""
    run_dir = cfg.TRAIN.save_path
    last = os.path.join(run_dir, "last.pth")
    if os.path.exists(last) and not cfg.TRAIN.resume and not cfg.TRAIN.overwrite:
        raise ConfigError(f"{run_dir} already holds a run (last.pth). Continue it with TRAIN.resume=true, "
                         f"start over with TRAIN.overwrite=true, or set another TRAIN.save_path.")
    if cfg.TRAIN.resume and not os.path.exists(last):
        raise ConfigError(f"TRAIN.resume=true but {last} does not exist")
    if rank == 0:
        check_can_write({run_dir: 0}, "the training run (TRAIN.save_path)")  # a named error, not a traceback
        if cfg.TRAIN.overwrite and not cfg.TRAIN.resume:
            # starting over: a stale best_model.pth or old events must not pass for this run's
            for name in ("best_model.pth", "last.pth", "train.log", "tensorboard"):
                path = os.path.join(run_dir, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
        os.makedirs(run_dir, exist_ok=True)
        save_config(cfg, os.path.join(run_dir, "config.yaml"))
    return last


def check_checkpoint_space(model, run_dir: str):
    """Before the first epoch: the run folder is writable and has room for best_model.pth, last.pth and
    the temporary copy written while one of them is replaced (weights + two Adam moments each)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    adam = sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    check_can_write({run_dir: 3 * (weights + adam)}, "training checkpoints")


def loader_workers(value, device) -> int:
    """``DATA.num_workers``: a number, or ``auto``: none when training on the CPU (the model's own
    threads use the cores, and loading is a small part of a CPU step); on a GPU, the cores this
    process may use, shared with the other processes torchrun starts on the node (LOCAL_WORLD_SIZE),
    less one for the process itself, at most 8."""
    if value != "auto":
        return int(value)
    if torch.device(device).type == "cpu":
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, min(8, per_process - 1))


def build_loader(dataset, cfg, rank, world_size, train, device="cpu"):
    """The DataLoader of one split. Worker processes persist across epochs; batches are pinned for
    the copy to a GPU. Training crops are seeded per (TRAIN.seed, epoch, sample) by ``CropSeeds``."""
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train,
                                 seed=cfg.TRAIN.seed, drop_last=False)
    if train:
        sampler = CropSeeds(sampler, cfg.TRAIN.seed)
    workers = loader_workers(cfg.DATA.num_workers, device)
    # Starting an iteration draws the workers' base seed from the loader's generator, the global torch
    # RNG by default. Each loader has its own, so neither the number of workers, nor whether they are
    # started this epoch or persist from the last, nor validating or not shifts the global RNG stream
    # (dropout): a resumed run matches an uninterrupted one. The workers' own RNG draws nothing.
    return DataLoader(dataset, batch_size=cfg.TRAIN.batch_size, sampler=sampler, collate_fn=collate,
                      num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=torch.device(device).type == "cuda",
                      generator=torch.Generator().manual_seed(cfg.TRAIN.seed))


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    rank, world_size, device = init_distributed(cfg)
    last = prepare_run_dir(cfg, rank)
    if world_size > 1:
        dist.barrier()  # run folder exists before other ranks look at it
    log = setup_logger("train", os.path.join(cfg.TRAIN.save_path, "train.log"), rank)
    device = device or pick_device(cfg.TRAIN.device, log)
    log.info("config %s, overrides %s, device %s, %d process(es)", args.config, args.overrides, device,
             world_size)
    seed_everything(cfg.TRAIN.seed + rank)

    styles = style_classes(cfg)
    log.info("%d style classes: %s", len(styles), styles)
    # read from the prepared-data store, after preparing what is missing or stale (DATA.store_root)
    train_set = FaceDataset(cfg, "train", styles, train=True, log=log, prepared=True)
    val_set = FaceDataset(cfg, "val", styles, train=False, log=log, prepared=True)
    if len(train_set) == 0:
        raise ConfigError(f"{args.config}: no training samples (check DATA.datasets.*.train)")
    log.info("train: %d samples, val: %d samples", len(train_set), len(val_set))
    train_loader = build_loader(train_set, cfg, rank, world_size, train=True, device=device)
    val_loader = build_loader(val_set, cfg, 0, 1, train=False, device=device) if len(val_set) else None
    log.info("data loading: %d worker process(es) per loader (DATA.num_workers=%s)", train_loader.num_workers,
             cfg.DATA.num_workers)

    model = FaceFormer(cfg.MODEL, n_styles=len(styles), framing=framing_from_config(cfg)).to(device)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model: %.2fM trainable parameters", n_train / 1e6)
    if rank == 0:
        check_checkpoint_space(model, cfg.TRAIN.save_path)
    if world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    # load_flame caches per (file, device), so datasets sharing a FLAME model share one module
    flame_of = {name: load_flame(flame_path_for(cfg, name), device=device) for name in cfg.DATA.datasets}

    writer = ScalarLog(os.path.join(cfg.TRAIN.save_path, "tensorboard"), log) if rank == 0 else None
    try:
        trainer = Trainer(cfg, model, train_loader, val_loader, flame_of, styles, device, log, rank, world_size,
                          writer)
        if cfg.TRAIN.resume:
            trainer.resume(last)
        trainer.fit()
    finally:
        if writer is not None:
            writer.close()
    log.info("done: %s", os.path.abspath(cfg.TRAIN.save_path))
    if world_size > 1:
        # every rank leaves the process group together: gloo can abort a rank whose peer has already
        # torn its side down ("terminate called without an active exception" at exit)
        dist.barrier()
        dist.destroy_process_group()


class PeerLost(UserError):
    """Another process of a multi-process (torchrun) job died; the message says how to resume."""


# how gloo and NCCL say that the other end of a collective is gone
_PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe", "remote worker",
              "socket timeout", "timed out")


def lost_a_peer(e: BaseException) -> bool:
    """True for the error a collective raises when another rank of the job stopped: a
    DistBackendError (NCCL, torch >= 2.1), or gloo's RuntimeError about the closed connection."""
    backend_error = getattr(dist, "DistBackendError", ())
    return isinstance(e, backend_error) or (isinstance(e, RuntimeError)
                                            and any(k in str(e).lower() for k in _PEER_GONE))


def main_or_peer_lost(argv=None):
    """main(), with a collective failing because another rank died turned into one line that says so
    and how to continue, instead of this rank's gloo/NCCL traceback (the dead rank's own output, above
    torchrun's summary, says why it died)."""
    try:
        return main(argv)
    except RuntimeError as e:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size < 2 or not lost_a_peer(e):
            raise
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeerLost(f"rank {os.environ.get('RANK', '?')} of {world_size}: another process of this job "
                       f"stopped, or cannot be reached ({first_line[:160]}); its own lines above say why. "
                       f"Epochs up to the last saved one are kept in TRAIN.save_path/last.pth: run the same "
                       f"torchrun command with TRAIN.resume=true to continue") from None


def cli(argv=None):
    """main() with a user's mistakes (config, data, FLAME, wav2vec2 or checkpoint files, a full disk)
    reported as one message and exit 1; SIGINT/SIGTERM as the line saying how to resume, exit 130/143;
    another rank's death as the line saying how to resume, exit 1."""
    run_reporting_user_errors("train", main_or_peer_lost, argv, logger=logging.getLogger("train"))


if __name__ == "__main__":
    cli()
