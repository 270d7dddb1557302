"""The `toytasks` command line. User mistakes print one line and exit with status 2; a non-finite
loss exits with 3, a file system error with 1, and a Ctrl-C or SIGTERM with 130 or 143 (after the
run it stopped has saved a resumable checkpoint), each with one line saying what happened."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from . import interrupts
from .errors import NonFiniteLoss, ToytasksError, ToytasksWarning, one_line


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

    resume = commands.add_parser("resume", help="finish interrupted runs: the same as "
                                                "`toytasks train RUN_DIR/config.yaml --resume`")
    resume.add_argument("run_dirs", nargs="+", metavar="run_dir")
    resume.add_argument("--no-progress", action="store_true", help="no progress bar")

    measure = commands.add_parser("measure", help="recompute the progress measures over a saved series")
    measure.add_argument("run_dirs", nargs="+", metavar="run_dir")
    measure.add_argument("--with", dest="extra", action="append", default=[], metavar="MEASURE",
                         help="also an optional (expensive) measure, e.g. the local learning coefficient "
                              "(`--with llc`); its options follow the run directories as MEASURE.OPTION=value")
    measure.add_argument("--only", action="append", default=[], metavar="MEASURE",
                         help="compute only this measure (repeatable), e.g. `--only llc`")
    measure.add_argument("--no-progress", action="store_true", help="no progress bar")

    sweep = commands.add_parser("sweep", help="train every point of a sweep file, skipping finished ones")
    sweep.add_argument("sweep_file", help="a YAML file from configs/sweeps/")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides for every point")
    sweep.add_argument("-j", "--jobs", type=int, default=1, help="points to train at once, each in its own process")
    only = sweep.add_mutually_exclusive_group()
    only.add_argument("--list", action="store_true", help="print the number of points, then one line per point")
    only.add_argument("--index", type=int, metavar="I", help="train point I alone, in this process (array jobs)")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar (with --index)")
    sweep.add_argument("--vmap", action="store_true",
                       help="train the points that differ only in seeds, learning rate, weight decay or initial "
                            "weights together, as one stacked run per group; --list and --index then count groups")

    plot = commands.add_parser("plot", help="write PNG figures into RUN_DIR/plots/ (or, for a directory of "
                                            "runs such as a sweep's, one summary figure into DIR/plots/)")
    plot.add_argument("run_dirs", nargs="+", metavar="run_dir")

    # Options may follow the overrides (`toytasks train c.yaml lr=1 --resume`): argparse leaves
    # the overrides after an option unparsed, so collect them here.
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or args.command == "plot"]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command in ("train", "sweep"):
        args.overrides += extra
    if args.command == "measure":  # `toytasks measure RUN --with llc llc.num_draws=400`: options
        options = [a for a in args.run_dirs if "=" in a and not Path(a).exists()]
        args.run_dirs, args.overrides = [a for a in args.run_dirs if a not in options], options + extra
    if args.command == "sweep" and args.jobs != 1 and (args.list or args.index is not None):
        parser.error("-j runs the whole sweep; it does not go with --list or --index")
    with interrupts.handled(), _one_line_warnings():
        command = {"train": _train, "resume": _resume, "sweep": _sweep, "measure": _measure, "plot": _plot}
        try:
            code = command[args.command](args)
            sys.stdout.flush()  # here, where a closed pipe is caught, rather than at exit
            return code
        except interrupts.Interrupted as stop:
            _error(stop, _how_to_go_on(args) if stop.resumable else "")
            return stop.exit_code
        except NonFiniteLoss as error:
            _error(error)
            return 3
        except ToytasksError as error:
            _error(error)
            return 2
        except BrokenPipeError:  # `toytasks sweep FILE --list | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
            return 0
        except OSError as error:  # the file system's (a full disk, no permission): one line, not a traceback
            _error(error)
            return 1
        except MemoryError:
            _error("out of memory; make the run smaller (task, model, batch_size or seeds)")
            return 1
    return 0


def _error(message, hint: str = "") -> None:
    """One line: the message (cut short if it is long: it may quote a huge value), then the hint whole."""
    print(f"error: {one_line(str(message))}{hint}", file=sys.stderr)


def _how_to_go_on(args) -> str:
    """The command that goes on from where an interrupted command stopped."""
    quiet = ["--no-progress"] if getattr(args, "no_progress", False) else []  # as it was asked
    if args.command == "train":
        return "; resume with: " + shlex.join(["toytasks", "train", args.config, *args.overrides, *quiet, "--resume"])
    if args.command == "resume":
        return "; resume with: " + shlex.join(["toytasks", "resume", *args.run_dirs, *quiet])
    return ""  # a sweep's message says it; measure and plot have nothing to resume


@contextmanager
def _one_line_warnings():
    """toytasks' own warnings (a broken run left out of a table) as `warning: ...` lines."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ToytasksWarning):
            print(f"warning: {one_line(str(message))}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _train(args) -> int:
    from .config import load_config
    from .training import global_rank, train_runs

    config = load_config(args.config, args.overrides)
    run_dirs = train_runs(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if global_rank() == 0:  # further DDP processes run this command too
        for run_dir in run_dirs:
            print(f"run: {run_dir}")
    return 0


def _resume(args) -> int:
    from pathlib import Path

    from .config import load_config
    from .layout import RunPaths
    from .training import train_runs

    for run_dir in args.run_dirs:
        config = load_config(RunPaths(Path(run_dir)).config)
        for done in train_runs(config, resume=True, progress=not args.no_progress):
            print(f"run: {done}")
    return 0


def _sweep(args) -> int:
    from .sweep import list_points, load_sweep, run_sweep, train_point

    sweep = load_sweep(args.sweep_file, args.overrides)
    if args.list:
        print("\n".join(list_points(sweep, vmap=args.vmap)))
        return 0
    if args.index is not None:
        point = sweep.point(args.index, vmap=args.vmap)
        if point.status() == "finished":
            print(f"{'group' if args.vmap else 'point'} {point.index} ({point.label}) is finished")
        for run_dir in train_point(point, progress=not args.no_progress):
            print(f"run: {run_dir}")
        return 0
    return 1 if run_sweep(sweep, jobs=args.jobs, vmap=args.vmap) else 0


def _measure(args) -> int:
    from .analysis.offline import measure_run
    from .analysis.run import load_run
    from .config import apply_overrides

    for item in args.overrides:
        if "." not in item.partition("=")[0]:
            raise ToytasksError(f"{item!r}: a measure's option is MEASURE.OPTION=value, e.g. llc.num_draws=400")
    options = apply_overrides({}, args.overrides)
    if not args.run_dirs:
        raise ToytasksError("no run directory given")
    for run_dir in args.run_dirs:
        run = load_run(run_dir)
        names = measure_run(run, progress=not args.no_progress, extra=args.extra, options=options, only=args.only)
        print(f"wrote {len(names)} measures into {run.paths.metrics}")
    return 0


def _plot(args) -> int:
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
