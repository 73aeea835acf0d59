"""Print two metrics JSONs of main/evaluate.py side by side (per dataset and overall).

    python scripts/compare_metrics.py MODEL.json BASELINE.json [--require_better LVE]

With --require_better METRIC, exit 1 unless the model's overall METRIC is lower than the baseline's
(with --max_ratio R: at most R times the baseline's).
"""
import argparse
import json
import sys


def rows(report: dict):
    yield from report["datasets"].items()
    yield "overall", report["overall"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("baseline")
    p.add_argument("--names", nargs=2, default=["model", "baseline"])
    p.add_argument("--require_better", choices=["LVE", "MVE"])
    p.add_argument("--max_ratio", type=float, default=1.0,
                   help="with --require_better: the model's metric must be <= this times the baseline's")
    args = p.parse_args(argv)
    reports = [json.load(open(path)) for path in (args.model, args.baseline)]
    base = dict(rows(reports[1]))
    a, b = args.names
    print(f"{'dataset':<16} {'metric':<4} {a:>12} {b:>12} {a + '/' + b:>16}")
    for name, r in rows(reports[0]):
        for metric in ("LVE", "MVE", "FDD"):
            x, y = r.get(metric), base.get(name, {}).get(metric)
            if x is None or y is None:
                continue
            ratio = f"{x / y:16.3f}" if metric != "FDD" and y else f"{'':>16}"
            print(f"{name:<16} {metric:<4} {x:12.4e} {y:12.4e} {ratio}")
    print(f"({reports[0].get('units', '')}; LVE/MVE lower is better, FDD closer to 0 is better)")
    if args.require_better:
        m = args.require_better
        x, y = reports[0]["overall"][m], reports[1]["overall"][m]
        if not (x < y and x <= args.max_ratio * y):
            print(f"FAILED: {a} overall {m} {x:.4e} is {x / y:.3f}x {b}'s {y:.4e}; required <= {args.max_ratio:g}x")
            return 1
        print(f"OK: {a} overall {m} is {y / x:.2f}x lower than {b}'s ({x / y:.3f}x; required <= {args.max_ratio:g}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
