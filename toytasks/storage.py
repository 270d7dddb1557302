"""Writing a run directory (and reading back its plain files): the rules for reusing it, its lock,
meta.json, the stored dataset and the series files. Paths come from toytasks/layout.py.

Every file is written under a fresh temporary name and renamed into place (toytasks/files.py), so
a crash never leaves a truncated file under a final name, and what a killed write leaves is
removed the next time the run is opened. One process at a time writes a run directory: it holds
the run's lock, which the operating system releases when that process dies. Series files are
safetensors: loading one never runs code.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

import torch

from .config import Config
from .errors import ToytasksError, first_line
from .files import (describe, dir_mode, discard_temporary, make_dir, remove_path, remove_temporaries,
                    temporary_name, write_bytes, write_text)
from .layout import RunPaths


def prepare_run_dir(config: Config, resume: bool, overwrite: bool) -> Path:
    """Make the run directory ready to train into, refusing to silently overwrite an earlier run
    in it. The caller holds the run's lock (RunLock)."""
    run_dir = config.run_dir
    paths = RunPaths(run_dir)
    if overwrite:
        clear_run_dir(run_dir)
    else:
        meta = read_meta(run_dir)
        if meta.get("finished"):
            raise ToytasksError(f"{run_dir} already holds a finished run; pass --overwrite to train it again")
        if meta and not resume:
            raise ToytasksError(f"{run_dir} holds an unfinished run; "
                                "pass --resume to continue it or --overwrite to start over")
        for directory in (paths.root, paths.series_dir):
            remove_temporaries(directory)  # left by a killed write
    check_directories(paths)
    write_text(paths.config, config.to_yaml())
    return run_dir


def clear_run_dir(run_dir: Path) -> None:
    """Delete everything in a run directory but its lock (held by the caller, and kept so that no
    other process can take a fresh one meanwhile)."""
    lock = RunPaths(run_dir).lock.name
    for entry in os.scandir(run_dir):
        if entry.name != lock:
            remove_path(Path(entry.path))


def check_directories(paths: RunPaths) -> None:
    """Refuse a run directory whose subdirectories are symlinks: writes would land elsewhere."""
    for path in paths.directories():
        if path.is_symlink():
            raise ToytasksError(f"{path} is a symbolic link; toytasks writes only into real directories "
                                "(remove it and run again)")


class RunBusy(ToytasksError):
    """Another live process holds the run's lock."""


class RunLock:
    """`with RunLock(run_dir):` one process at a time writes a run directory (training, `--overwrite`,
    `toytasks measure`).

    An advisory lock (flock) on RUN_DIR/.lock, which the operating system releases when its holder
    exits however it dies: there is no stale lock to take over, and no race in taking one over.
    The file names the holder (host, PID, what it does) for the error message only."""

    def __init__(self, run_dir: Path, purpose: str = "training"):
        self.run_dir, self.path = Path(run_dir), RunPaths(run_dir).lock
        self.owner = f"{socket.gethostname()} pid {os.getpid()}, {purpose}"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        make_dir(self.run_dir)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            except OSError as error:
                raise ToytasksError(f"{self.path}: cannot open the run's lock ({describe(error)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = os.read(fd, 200).decode(errors="replace").strip()
                os.close(fd)
                if isinstance(error, BlockingIOError):
                    raise RunBusy(f"{self.run_dir} is in use by another process ({holder or 'starting up'})") from None
                raise ToytasksError(f"{self.path}: cannot lock ({describe(error)})") from None
            if self._still_there(fd):
                break
            os.close(fd)  # its last holder removed it between our open and flock: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{self.owner}\n".encode())
        self.fd = fd
        return self

    def _still_there(self, fd: int) -> bool:
        try:
            here, ours = os.lstat(self.path), os.fstat(fd)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino)

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        try:
            if self._still_there(self.fd):
                self.path.unlink()  # while still holding it; a waiter then sees it gone and retries
        finally:
            os.close(self.fd)
            self.fd = None


def load_or_make_dataset(config: Config, run_dir: Path):
    """The finite task's DatasetDict, stored once in the run directory; None for sampled tasks."""
    if not config.task.finite:
        return None
    from datasets import load_from_disk
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # a bar per shard for a few kB of data is noise
    path = RunPaths(run_dir).data
    if not path.exists():  # written whole into a fresh hidden directory, then renamed into place
        tmp = path.with_name(temporary_name(path.name))
        try:
            os.mkdir(tmp, dir_mode())
            config.task.make_dataset().save_to_disk(str(tmp))
            os.rename(tmp, path)
        except BaseException as error:
            discard_temporary(tmp)
            if isinstance(error, OSError):
                raise ToytasksError(f"{path}: cannot write the dataset ({describe(error)})") from None
            raise
    return load_from_disk(str(path))


def read_meta(run_dir: Path) -> dict:
    """meta.json as a dict ({} when there is none yet); a one-line error when it is corrupted."""
    path = RunPaths(run_dir).meta
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise ToytasksError(f"{path}: cannot read ({describe(error)})") from None
    except ValueError as error:  # not JSON, or not text
        raise ToytasksError(f"{path}: corrupted ({first_line(error)}); delete it to treat the run as "
                            "unfinished, or train it again with --overwrite") from None
    if not isinstance(meta, dict):
        raise ToytasksError(f"{path}: corrupted (not a JSON object); delete it to treat the run as unfinished, "
                            "or train it again with --overwrite")
    return meta


def _installed_version(package: str) -> str:
    """The installed version, or "not installed" (a source checkout on the PYTHONPATH)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def write_meta(run_dir: Path, config: Config, **fields) -> dict:
    """Merge `fields` into meta.json, with the versions, git sha and run identity."""
    from importlib.metadata import version

    meta = read_meta(run_dir)
    meta.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S"))
    meta.update(
        versions={"toytasks": _installed_version("toytasks"), "torch": torch.__version__, "lightning": version("lightning"),
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
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # Serialised here and written by us: safetensors' save_file creates its files 0600.
    write_bytes(path, save(state, metadata={"step": str(step)}))


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
