"""toytasks: train small TransformerLens models on generated algorithmic tasks."""
__version__ = "0.1.0"


def load_run(path):
    """Open a run directory for analysis (see `toytasks.analysis.run.Run`)."""
    from .analysis.run import load_run as _load_run

    return _load_run(path)


def load_runs(pattern_or_dir):
    """Open a set of runs, e.g. the seeds or a sweep, as tidy DataFrames (see `toytasks.analysis.run_set`)."""
    from .analysis.run_set import load_runs as _load_runs

    return _load_runs(pattern_or_dir)


def latest_run(experiment, out_dir="checkpoints"):
    """The path of the newest run of an experiment, e.g. `latest_run("grokking_cpu")`."""
    from .analysis.run_set import latest_run as _latest_run

    return _latest_run(experiment, out_dir)


__all__ = ["latest_run", "load_run", "load_runs", "__version__"]
