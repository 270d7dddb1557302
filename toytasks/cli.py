"""The `toytasks` command line. User mistakes print one line and exit with status 2."""
from __future__ import annotations

import argparse
import sys

from .errors import NonFiniteLoss, ToytasksError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="toytasks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a config; prints `run: PATH` last")
    train.add_argument("config", help="a YAML file from configs/")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotted overrides, e.g. optim.lr=3e-3 task.p=53")
    train.add_argument("--resume", action="store_true", help="continue the run from its last.ckpt")
    train.add_argument("--overwrite", action="store_true", help="delete an earlier run of this config first")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    measure = commands.add_parser("measure", help="recompute the progress measures over a saved series")
    measure.add_argument("run_dirs", nargs="+", metavar="run_dir")
    measure.add_argument("--no-progress", action="store_true", help="no progress bar")

    sweep = commands.add_parser("sweep", help="train every point of a sweep file, skipping finished ones")
    sweep.add_argument("sweep_file", help="a YAML file from configs/sweeps/")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides for every point")
    sweep.add_argument("-j", "--jobs", type=int, default=1, help="points to train at once, each in its own process")
    only = sweep.add_mutually_exclusive_group()
    only.add_argument("--list", action="store_true", help="print the number of points, then one line per point")
    only.add_argument("--index", type=int, metavar="I", help="train point I alone, in this process (array jobs)")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar (with --index)")

    plot = commands.add_parser("plot", help="write PNG figures into RUN_DIR/plots/ (or, for a directory of "
                                            "runs such as a sweep's, one summary figure into DIR/plots/)")
    plot.add_argument("run_dirs", nargs="+", metavar="run_dir")

    # Options may follow the overrides (`toytasks train c.yaml lr=1 --resume`): argparse leaves
    # the overrides after an option unparsed, so collect them here.
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or args.command not in ("train", "sweep")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command in ("train", "sweep"):
        args.overrides += extra
    if args.command == "sweep" and args.jobs != 1 and (args.list or args.index is not None):
        parser.error("-j runs the whole sweep; it does not go with --list or --index")
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "measure":
            return _measure(args)
        if args.command == "plot":
            return _plot(args)
    except NonFiniteLoss as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except ToytasksError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _train(args) -> int:
    from .config import load_config
    from .training import global_rank, train_runs

    config = load_config(args.config, args.overrides)
    run_dirs = train_runs(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if global_rank() == 0:  # further DDP processes run this command too
        for run_dir in run_dirs:
            print(f"run: {run_dir}")
    return 0


def _sweep(args) -> int:
    from .sweep import list_points, load_sweep, run_sweep, train_point

    sweep = load_sweep(args.sweep_file, args.overrides)
    if args.list:
        print("\n".join(list_points(sweep)))
        return 0
    if args.index is not None:
        point = sweep.point(args.index)
        if point.status() == "finished":
            print(f"point {point.index} ({point.label}) is finished")
        for run_dir in train_point(point, progress=not args.no_progress):
            print(f"run: {run_dir}")
        return 0
    return 1 if run_sweep(sweep, jobs=args.jobs) else 0


def _measure(args) -> int:
    from .analysis.offline import measure_run
    from .analysis.run import load_run

    for run_dir in args.run_dirs:
        run = load_run(run_dir)
        names = measure_run(run, progress=not args.no_progress)
        print(f"wrote {len(names)} measures into {run.paths.metrics}")
    return 0


def _plot(args) -> int:
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")  # files only, never a window (notebooks keep their inline backend)
    from .analysis.figures import plot_run, plot_sweep_dir
    from .analysis.run import load_run
    from .layout import RunPaths

    for run_dir in args.run_dirs:
        is_run = RunPaths(run_dir).is_run() or not Path(run_dir).is_dir()
        for path in plot_run(load_run(run_dir)) if is_run else plot_sweep_dir(run_dir):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
