"""toytasks: train small TransformerLens models on generated algorithmic tasks."""
__version__ = "0.1.0"


def load_run(path):
    """Open a run directory for analysis (see `toytasks.run.Run`)."""
    from .run import load_run as _load_run

    return _load_run(path)


__all__ = ["load_run", "__version__"]
