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

    plot = commands.add_parser("plot", help="write PNG figures into RUN_DIR/plots/")
    plot.add_argument("run_dirs", nargs="+", metavar="run_dir")

    # Options may follow the overrides (`toytasks train c.yaml lr=1 --resume`): argparse leaves
    # the overrides after an option unparsed, so collect them here.
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or args.command != "train"]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "train":
        args.overrides += extra
    try:
        if args.command == "train":
            return _train(args)
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
    from .train import train

    config = load_config(args.config, args.overrides)
    run_dir = train(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"run: {run_dir}")
    return 0


def _measure(args) -> int:
    from .measures.offline import measure_run
    from .run import load_run

    for run_dir in args.run_dirs:
        names = measure_run(load_run(run_dir), progress=not args.no_progress)
        print(f"wrote {len(names)} measures into {run_dir}/metrics.csv")
    return 0


def _plot(args) -> int:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window (notebooks keep their inline backend)
    from .plots import plot_run
    from .run import load_run

    for run_dir in args.run_dirs:
        for path in plot_run(load_run(run_dir)):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
