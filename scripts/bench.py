"""Benchmark: toytasks beside the seed notebook's grokking loop, same device, same workload; and
(`--full`) the wall time of the whole configs/grokking.yaml reproduction with its measures.

    .venv/bin/python scripts/bench.py                      # p=113, 200 steps, 3 repetitions
    .venv/bin/python scripts/bench.py --steps 2000 --reps 5 --out bench.json
    .venv/bin/python scripts/bench.py --full               # the full run: strict fp32, then TF32
    .venv/bin/python scripts/bench.py --full --settings eager=trainer.capture=off --full-steps 2000
    .venv/bin/python scripts/bench.py --full --keep runs/   # and keep each setting's metrics, phases and plots

Each repetition runs the seed's loop (../shared/peer/seed_grokking_loop.py, as it stands) and
toytasks (`configs/grokking.yaml`: test loss every step, a checkpoint every 100 steps, the Fourier
measures at each checkpoint and over the series at the end) for the same number of steps, one
after the other, each in a fresh process. Two speeds: the training loop's steps per second (each
side times its own loop) and the whole process's (start-up, imports, data, the loop, what follows
it: what a user waits for), each as toytasks / seed loop within a repetition. It prints them, the
medians, and peak memory (GPU memory on CUDA, resident memory on the CPU), and writes them to a
JSON file. Run it alone: a second PyTorch process on the same cores distorts both numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PEER = ROOT.parent / "shared" / "peer" / "seed_grokking_loop.py"


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def run_peer(args) -> dict:
    """In this process: the seed's loop, as a script, then its own timing line."""
    import io
    from contextlib import redirect_stdout

    sys.argv = [str(args.peer), "--p", str(args.p), "--steps", str(args.steps), "--device", args.device]
    out = io.StringIO()
    with redirect_stdout(out):
        runpy.run_path(str(args.peer), run_name="__main__")
    fields = dict(re.findall(r"(\w+)=(\S+)", out.getvalue()))
    return {"steps_per_s": float(fields["steps_per_s"]), "seconds": float(fields["seconds"]),
            "test_loss": float(fields["test_loss"]), "peak_memory_mb": peak_memory_mb()}


def make_clock(until: str):
    """A Lightning callback timing from the first step to the end of training (`until="train"`)
    or of fit (`"fit"`: after the end-of-run measures too); its `seconds` add up over fits."""
    import lightning as L

    class Clock(L.Callback):
        seconds = 0.0

        def on_train_start(self, trainer, pl_module):
            _sync(pl_module.device)
            self.start = time.perf_counter()

        def _stop(self, pl_module):
            _sync(pl_module.device)
            self.seconds += time.perf_counter() - self.start

        def on_train_end(self, trainer, pl_module):
            if until == "train":
                self._stop(pl_module)

        def on_fit_end(self, trainer, pl_module):
            if until == "fit":
                self._stop(pl_module)

    return Clock()


def run_toytasks(args) -> dict:
    """In this process: toytasks on configs/grokking.yaml, timed from the first step to the end."""
    sys.path.insert(0, str(ROOT))
    from toytasks.config import load_config
    from toytasks.training import train

    clock = make_clock(until="train")
    with tempfile.TemporaryDirectory() as out_dir:
        config = load_config(args.config, [f"task.p={args.p}", f"max_steps={args.steps}", f"out_dir={out_dir}",
                                           *args.overrides])
        run_dir = train(config, progress=False, callbacks=[clock])  # the clock runs after every measure
        import pandas as pd

        test_loss = pd.read_csv(run_dir / "metrics.csv")["val/loss"].dropna().iloc[-1]
    return {"steps_per_s": args.steps / clock.seconds, "seconds": clock.seconds, "test_loss": float(test_loss),
            "peak_memory_mb": peak_memory_mb()}


def run_full(args) -> dict:
    """In this process: the full configs/grokking.yaml run (or --full-steps of it) with its measures,
    timed from the first step until training and the end-of-run measures are done."""
    sys.path.insert(0, str(ROOT))
    from toytasks.config import load_config
    from toytasks.training import train

    clock = make_clock(until="fit")
    with tempfile.TemporaryDirectory() as out_dir:
        steps = [f"max_steps={args.full_steps}"] if args.full_steps else []
        config = load_config(args.config, [*steps, f"out_dir={out_dir}", *args.overrides])
        run_dir = train(config, progress=False, callbacks=[clock])
        import pandas as pd

        metrics = pd.read_csv(run_dir / "metrics.csv")
        meta = json.loads((run_dir / "meta.json").read_text())
        phases_path = run_dir / "phases.json"
        phases = json.loads(phases_path.read_text()) if phases_path.exists() else {}
        if args.keep:  # its small files (no series, no checkpoint), to look at after the run
            import tarfile

            Path(args.keep).mkdir(parents=True, exist_ok=True)
            with tarfile.open(Path(args.keep) / f"{args.name}.tar.gz", "w:gz") as tar:
                for name in ("metrics.csv", "phases.json", "meta.json", "config.yaml", "plots"):
                    if (run_dir / name).exists():
                        tar.add(run_dir / name, arcname=name)
    last = metrics.dropna(subset=["val/loss"]).iloc[-1]
    return {"training_seconds": clock.seconds,  # run_fresh adds the whole process's seconds
            "steps": config.max_steps, "steps_per_s": config.max_steps / clock.seconds,
            "captured_step": meta.get("captured_step"), "matmul_precision": config.matmul_precision,
            "phases": phases, "final_test_loss": float(last["val/loss"]), "final_test_acc": float(last["val/acc"]),
            "peak_memory_mb": peak_memory_mb()}


def full_runs(args) -> None:
    """Each setting (NAME=override,override) of the full run in a fresh process, one after the other."""
    import torch

    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    print(f"device: {device_name}   config: {args.config}   steps: {args.full_steps or 'all'}")
    results = {}
    for setting in args.settings:
        name, _, overrides = setting.partition("=")
        flags = [f"--config={args.config}", f"--full-steps={args.full_steps}", f"--name={name}",
                 *([f"--keep={args.keep}"] if args.keep else []),
                 *[o for o in overrides.split(",") if o], *args.overrides]
        results[name] = result = run_fresh(__file__, "full", flags)
        print(f"{name:>8}: {result['training_seconds']:7.1f} s of training with measures ({result['steps_per_s']:.0f} "
              f"steps/s; {result['process_seconds']:.1f} s for the whole process), captured step: {result['captured_step']}, "
              f"phases {result['phases']}, final test loss {result['final_test_loss']:.3g}")
        # Written after each setting, so that a run cut short keeps what it measured.
        Path(args.out).write_text(json.dumps({"device": device_name, "config": args.config, "settings": results},
                                             indent=2))
    print(f"wrote {args.out}")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(which: str, args) -> dict:
    return run_fresh(__file__, which, [f"--p={args.p}", f"--steps={args.steps}", f"--device={args.device}",
                                       f"--peer={args.peer}", f"--config={args.config}", *args.overrides])


def run_fresh(script: str, side: str, flags: list[str]) -> dict:
    """Run one side of a benchmark script (`--inner=side`) in a fresh process; its last line is JSON."""
    command = [sys.executable, script, f"--inner={side}", *flags]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ})
    process_seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{side} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_seconds": process_seconds}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p", type=int, default=113)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peer", type=Path, default=DEFAULT_PEER)
    ap.add_argument("--config", default=str(ROOT / "configs" / "grokking.yaml"))
    ap.add_argument("--out", default="bench.json")
    ap.add_argument("--full", action="store_true", help="time the whole configs/grokking.yaml run with its measures")
    ap.add_argument("--full-steps", type=int, default=0, help="with --full: this many steps instead of all")
    ap.add_argument("--settings", nargs="+", default=["fp32=", "tf32=matmul_precision=high"],
                    help="with --full: NAME=override,override for each run (default: strict fp32, then TF32)")
    ap.add_argument("--keep", help="with --full: keep each setting's metrics, phases and plots in KEEP/NAME.tar.gz")
    ap.add_argument("--name", default="full", help=argparse.SUPPRESS)
    ap.add_argument("--inner", choices=["peer", "toytasks", "full"], help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="extra toytasks overrides, e.g. eval_every=10")
    args = ap.parse_args()

    if args.inner:
        result = {"peer": run_peer, "toytasks": run_toytasks, "full": run_full}[args.inner](args)
        print(json.dumps(result))
        return
    if args.full:
        full_runs(args)
        return
    if not args.peer.exists():
        sys.exit(f"{args.peer}: the seed loop is not there; pass --peer PATH")

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
    print(f"device: {device_name}   p={args.p}   steps={args.steps}   reps={args.reps}")
    reps = []
    for rep in range(args.reps):  # interleaved: the machine's drift hits both sides alike
        peer, ours = measure("peer", args), measure("toytasks", args)
        ratio = ours["steps_per_s"] / peer["steps_per_s"]
        process_ratio = peer["process_seconds"] / ours["process_seconds"]  # > 1: toytasks is faster
        reps.append({"seed_loop": peer, "toytasks": ours, "ratio": ratio, "process_ratio": process_ratio})
        print(f"rep {rep + 1}: loop: seed {peer['steps_per_s']:6.2f} steps/s, toytasks {ours['steps_per_s']:6.2f}, "
              f"ratio {ratio:4.2f} | whole process: seed {peer['process_seconds']:6.1f} s, toytasks "
              f"{ours['process_seconds']:6.1f} s, speed ratio {process_ratio:4.2f} | peak MB seed "
              f"{peer['peak_memory_mb']:.0f}, toytasks {ours['peak_memory_mb']:.0f}")
    median = lambda key, side: statistics.median(r[side][key] for r in reps)  # noqa: E731
    summary = {
        "device": device_name, "p": args.p, "steps": args.steps, "reps": reps,
        "median_steps_per_s": {"seed_loop": median("steps_per_s", "seed_loop"),
                               "toytasks": median("steps_per_s", "toytasks")},
        "median_ratio": statistics.median(r["ratio"] for r in reps),
        "median_process_seconds": {"seed_loop": median("process_seconds", "seed_loop"),
                                   "toytasks": median("process_seconds", "toytasks")},
        "median_process_ratio": statistics.median(r["process_ratio"] for r in reps),
        "peak_memory_mb": {"seed_loop": median("peak_memory_mb", "seed_loop"),
                           "toytasks": median("peak_memory_mb", "toytasks")},
        "overrides": args.overrides,
    }
    peak = summary["peak_memory_mb"]
    print(f"median: loop speed ratio {summary['median_ratio']:.2f}, whole-process speed ratio "
          f"{summary['median_process_ratio']:.2f} (toytasks / seed loop); peak memory MB seed {peak['seed_loop']:.0f}, "
          f"toytasks {peak['toytasks']:.0f} ({peak['toytasks'] / peak['seed_loop']:.2f}x)")
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
