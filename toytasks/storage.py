"""Writing a run directory (and reading back its plain files): the rules for reusing it, its lock,
meta.json, the stored dataset and the series files. Paths come from toytasks/layout.py.

Every file is written to a temporary name and renamed into place, so a crash never leaves a
truncated file under a final name. A lock file holding the owner's host and PID keeps two
processes out of one run; a lock whose process is gone is stale and taken over. Series files are
safetensors: loading one never runs code.
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
from .errors import ToytasksError, first_line
from .files import write_atomically, write_text
from .layout import RunPaths


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
    write_text(RunPaths(run_dir).config, config.to_yaml())
    return run_dir


class RunLock:
    """`with RunLock(run_dir):` one training process per run directory."""

    def __init__(self, run_dir: Path):
        self.path = RunPaths(run_dir).lock
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
    path = RunPaths(run_dir).data
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        config.task.make_dataset().save_to_disk(str(tmp))
        tmp.rename(path)
    return load_from_disk(str(path))


def read_meta(run_dir: Path) -> dict:
    path = RunPaths(run_dir).meta
    return json.loads(path.read_text()) if path.exists() else {}


def write_meta(run_dir: Path, config: Config, **fields) -> dict:
    """Merge `fields` into meta.json, with the versions, git sha and run identity."""
    from importlib.metadata import version

    meta = read_meta(run_dir)
    meta.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S"))
    meta.update(
        versions={"toytasks": version("toytasks"), "torch": torch.__version__, "lightning": version("lightning"),
                  "transformer_lens": version("transformer-lens"), "python": platform.python_version()},
        git_sha=_git_sha(), run_id=config.run_id, experiment=config.experiment, **fields,
    )
    write_text(RunPaths(run_dir).meta, json.dumps(meta, indent=2))
    return meta


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2))


def save_weights(model: torch.nn.Module, path: Path, step: int) -> None:
    """A series file: the model's state dict as safetensors, with its step in the metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    write_atomically(path, lambda tmp: save_file(state, str(tmp), metadata={"step": str(step)}))


def load_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A series file's tensors (on `device`), with a one-line error for a missing or broken file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as error:
        raise ToytasksError(f"{path}: unreadable checkpoint ({first_line(error)})") from None


def resumable_step(path: Path) -> int:
    """The step a resumable checkpoint was written at, read without unpickling code."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception as error:  # truncated, corrupted, or not a checkpoint at all
        raise ToytasksError(f"{path}: cannot resume from this checkpoint ({first_line(error)}); "
                            "pass --overwrite to start over") from None
