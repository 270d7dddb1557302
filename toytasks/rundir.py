"""The run directory: its files, its lock, and the rules for reusing it.

Every file is written to a temporary name and renamed into place, so a crash never leaves a
truncated file under a final name. A lock file holding the owner's host and PID keeps two
processes out of one run; a lock whose process is gone is stale and taken over.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import time
from pathlib import Path

import torch

from .config import Config
from .errors import ToytasksError
from .files import write_text

CONFIG = "config.yaml"
DATA_DIR = "data"
META = "meta.json"
LOCK = ".lock"


def prepare_run_dir(config: Config, resume: bool, overwrite: bool) -> Path:
    """Create the run directory, refusing to silently overwrite an earlier run in it."""
    run_dir = config.run_dir
    meta = read_meta(run_dir)
    if meta and overwrite:
        shutil.rmtree(run_dir)
    elif meta.get("finished"):
        raise ToytasksError(f"{run_dir} already holds a finished run; pass --overwrite to train it again")
    elif meta and not resume:
        raise ToytasksError(f"{run_dir} holds an unfinished run; "
                            "pass --resume to continue it or --overwrite to start over")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / CONFIG, config.to_yaml())
    return run_dir


class RunLock:
    """`with RunLock(run_dir):` one training process per run directory."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.owner = f"{socket.gethostname()} {os.getpid()}"

    def __enter__(self) -> "RunLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale():
                    raise ToytasksError(f"{self.path.parent} is in use by another process "
                                        f"({self.path.read_text().strip() or 'unknown'}); "
                                        f"if that process is gone, delete {self.path}") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.owner)
            return self
        raise ToytasksError(f"{self.path}: could not take the run's lock")

    def __exit__(self, *exc) -> None:
        if self.path.exists() and self.path.read_text() == self.owner:
            self.path.unlink()

    def _stale(self) -> bool:
        """True when the lock's process is known to be gone (same host, no such PID)."""
        try:
            host, pid = self.path.read_text().split()
        except (OSError, ValueError):
            return True  # empty or unreadable: a crash between create and write
        if host != socket.gethostname():
            return False  # cannot tell: the other host may still be training
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def load_or_make_dataset(config: Config, run_dir: Path):
    """The finite task's DatasetDict, stored once in the run directory; None for sampled tasks."""
    if not config.task.finite:
        return None
    from datasets import load_from_disk
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # a bar per shard for a few kB of data is noise
    path = run_dir / DATA_DIR
    if not path.exists():
        tmp = path.with_name(DATA_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        config.task.make_dataset().save_to_disk(str(tmp))
        tmp.rename(path)
    return load_from_disk(str(path))


def read_meta(run_dir: Path) -> dict:
    path = Path(run_dir) / META
    return json.loads(path.read_text()) if path.exists() else {}


def write_meta(run_dir: Path, config: Config, **fields) -> dict:
    """Merge `fields` into meta.json, with the versions, git sha and run identity."""
    from importlib.metadata import version

    from . import __version__

    meta = read_meta(run_dir)
    meta.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S"))
    meta.update(
        versions={"toytasks": __version__, "torch": torch.__version__, "lightning": version("lightning"),
                  "transformer_lens": version("transformer-lens"), "python": platform.python_version()},
        git_sha=_git_sha(), run_id=config.run_id, experiment=config.experiment, **fields,
    )
    write_text(run_dir / META, json.dumps(meta, indent=2))
    return meta


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
