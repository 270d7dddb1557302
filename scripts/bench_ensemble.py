"""Benchmark: N seeds trained as one ensemble against the same N seeds as single runs in sequence;
with `--grid`, N runs of a hyperparameter grid (learning rate x weight decay x seed) as one stacked
run against the same N runs in sequence.

    .venv/bin/python scripts/bench_ensemble.py                      # 32 seeds, configs/grokking.yaml, 200 steps
    .venv/bin/python scripts/bench_ensemble.py --seeds 4 --steps 100 --config configs/grokking_cpu.yaml
    .venv/bin/python scripts/bench_ensemble.py --grid               # a 32-run grid (4 lr x 4 weight decays x 2 seeds)

The same approach as scripts/bench.py: the two sides alternate, repetition by repetition, each in
a fresh process, on the same device and workload (by default the full grokking run: p = 113, full
batch, test loss every step, a checkpoint every 100 steps, the Fourier measures at each one and
over the series at the end). Each side times its training only, from the first step until
training and its end-of-run measures are done: the single runs one after another in one process
(the sum of their times), the ensemble in one `train_ensemble`. Start-up and model building are
not timed. It prints seed-steps per second of each side, their ratio in each repetition, the
median ratio and peak memory, and writes them to a JSON file. Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import make_clock, peak_memory_mb, run_fresh  # noqa: E402  (scripts/bench.py)


def grid_points(n: int) -> list[list[str]]:
    """n runs of a grid: learning rates x weight decays x seeds, the seeds varying fastest."""
    lrs, wds = [3e-4, 1e-3, 3e-3, 1e-2], [0.1, 0.3, 1.0, 3.0]
    points = [[f"optim.lr={lr}", f"optim.weight_decay={wd}", f"seed={seed}"]
              for lr in lrs for wd in wds for seed in range(max(1, -(-n // (len(lrs) * len(wds)))))]
    return points[:n]


def run_side(args) -> dict:
    """In this process: the N runs as single runs (`singles`) or as one stacked run (`ensemble`)."""
    from toytasks.config import load_config
    from toytasks.training import train, train_members

    points = grid_points(args.seeds) if args.grid else [[f"seed={seed}"] for seed in range(args.seeds)]
    timer = make_clock(until="fit")
    with tempfile.TemporaryDirectory() as out_dir:
        overrides = [f"max_steps={args.steps}", f"out_dir={out_dir}", f"trainer.accelerator={args.device}",
                     *args.overrides]
        configs = [load_config(args.config, [*overrides, *point]) for point in points]
        if args.inner == "ensemble":
            train_members(configs, progress=False, callbacks=[timer])
        else:
            for config in configs:
                train(config, progress=False, callbacks=[timer])
    return {"seconds": timer.seconds, "seed_steps_per_s": args.seeds * args.steps / timer.seconds,
            "peak_memory_mb": peak_memory_mb()}


def measure(side: str, args) -> dict:
    return run_fresh(__file__, side, [f"--seeds={args.seeds}", f"--steps={args.steps}", f"--device={args.device}",
                                      f"--config={args.config}", *(["--grid"] if args.grid else []), *args.overrides])


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=32, help="runs: seeds, or with --grid the grid's size")
    ap.add_argument("--grid", action="store_true", help="runs that differ in learning rate and weight decay too")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--config", default=str(ROOT / "configs" / "grokking.yaml"))
    ap.add_argument("--out", default="bench_ensemble.json")
    ap.add_argument("--inner", choices=["singles", "ensemble"], help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="extra toytasks overrides, e.g. checkpoints.every=50")
    args = ap.parse_args()
    if args.inner:
        print(json.dumps(run_side(args)))
        return

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
    print(f"device: {device_name}   config: {args.config}   {'grid' if args.grid else 'seeds'}={args.seeds}   "
          f"steps={args.steps}   reps={args.reps}")
    reps = []
    for rep in range(args.reps):  # interleaved: the machine's drift hits both sides alike
        singles, ensemble = measure("singles", args), measure("ensemble", args)
        ratio = ensemble["seed_steps_per_s"] / singles["seed_steps_per_s"]
        reps.append({"singles": singles, "ensemble": ensemble, "ratio": ratio})
        print(f"rep {rep + 1}: {args.seeds} single runs {singles['seconds']:7.1f} s ({singles['seed_steps_per_s']:8.1f} "
              f"seed-steps/s)   ensemble {ensemble['seconds']:7.1f} s ({ensemble['seed_steps_per_s']:8.1f} seed-steps/s)"
              f"   ratio {ratio:5.2f}   peak MB {singles['peak_memory_mb']:.0f} / {ensemble['peak_memory_mb']:.0f}")
    median = lambda side, key: statistics.median(r[side][key] for r in reps)  # noqa: E731
    summary = {"device": device_name, "config": args.config, "seeds": args.seeds, "grid": args.grid, "steps": args.steps,
               "overrides": args.overrides, "reps": reps,
               "median_seed_steps_per_s": {s: median(s, "seed_steps_per_s") for s in ("singles", "ensemble")},
               "median_ratio": statistics.median(r["ratio"] for r in reps),
               "peak_memory_mb": {s: median(s, "peak_memory_mb") for s in ("singles", "ensemble")}}
    print(f"median: single runs {summary['median_seed_steps_per_s']['singles']:.1f} seed-steps/s, ensemble "
          f"{summary['median_seed_steps_per_s']['ensemble']:.1f} seed-steps/s, ratio {summary['median_ratio']:.2f} "
          "(ensemble / single runs in sequence)")
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
