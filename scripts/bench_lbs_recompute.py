"""Why models/lbs.py writes its activation checkpointing out instead of using torch.utils.checkpoint.

Runs the vertex loss forward + backward (B=4, T=300, stand-in FLAME, CPU) once per variant of the
LBS recompute, each in a fresh process (peak RSS is per process): the hand-written ``_RecomputedLBS``,
``torch.utils.checkpoint`` non-reentrant and reentrant, and no checkpointing. Prints a table and
writes JSON. ``python scripts/bench_lbs_recompute.py [--out docs/benchmarks_lbs_recompute_cpu.json]``
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("hand_written", "checkpoint_non_reentrant", "checkpoint_reentrant", "no_checkpoint")


def run_variant(variant: str, B: int = 4, T: int = 300, steps: int = 4) -> dict:
    """In this process: patch the recompute of models.lbs, time ``steps`` loss + backward passes."""
    import resource
    import time

    import torch
    from torch.utils.checkpoint import checkpoint

    from loss.loss import motion_vertex_loss
    from models import lbs
    from models.flame import FLAME
    from scripts.flame_standin import make_standin_flame

    def chunked(ckpt):
        def apply(fn, step, *x):
            v, j, e, p = x
            return torch.cat([ckpt(fn, v, j, e[:, t:t + step], p[:, t:t + step]) for t in range(0, e.shape[1], step)], 1)
        return type("Patched", (), {"apply": staticmethod(apply)})

    if variant == "checkpoint_non_reentrant":
        lbs._RecomputedLBS = chunked(lambda *a: checkpoint(*a, use_reentrant=False))
    elif variant == "checkpoint_reentrant":
        lbs._RecomputedLBS = chunked(lambda *a: checkpoint(*a, use_reentrant=True))
    elif variant == "no_checkpoint":
        lbs._RecomputedLBS = chunked(lambda fn, *a: fn(*a))
    torch.manual_seed(0)
    flame = FLAME(make_standin_flame(0))
    gt, shape = torch.randn(B, T, 51) * 0.3, torch.randn(B, 300) * 0.5
    mask = torch.ones(B, T, dtype=torch.bool)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps):
        pred = (torch.randn(B, T, 51) * 0.3).requires_grad_()
        t0 = time.perf_counter()
        motion_vertex_loss(pred, gt, mask, flame, shape)[0].backward()
        times.append(time.perf_counter() - t0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "first_s": times[0], "median_later_s": sorted(times[1:])[len(times[1:]) // 2],
            "peak_rss_growth_mb": (rss1 - rss0) / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks_lbs_recompute_cpu.json"))
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # the child process
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant)))
        return
    rows = []
    for v in VARIANTS:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--variant", v], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'variant':26s} {'first s':>8s} {'later s':>8s} {'peak RSS +MB':>13s}")
    for r in rows:
        print(f"{r['variant']:26s} {r['first_s']:8.2f} {r['median_later_s']:8.2f} {r['peak_rss_growth_mb']:13.0f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": "2-core shared CPU, no GPU", "B": 4, "T": 300, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
