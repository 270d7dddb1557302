"""Crash-safe, confined file writes.

`write_atomically(path, write)` has `write(tmp)` fill a fresh temporary file beside `path`, then
renames it into place, so a crash never leaves a truncated `path`. The temporary file:

- has an unpredictable name (`.<name>.<random>.tmp`) and is created exclusively, never through a
  symbolic link, so nothing planted in a run directory can redirect the write;
- is removed when the write fails (a full disk leaves nothing behind);
- gets the permissions of the umask, as any other new file (some writers create 0600 files).

A symlink at `path` itself is replaced, never written through, and the directory that holds
`path` must be a real directory: a run directory's `plots/` or `analysis/` planted as a symlink is
refused. Directories above it may be symlinks (`checkpoints/` on a scratch disk). An OSError
becomes a one-line ToytasksError naming the file.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from pathlib import Path

from .errors import ToytasksError


class WriteError(ToytasksError):
    """A file or directory could not be written; `errno` says why (EROFS, EACCES, ENOSPC, ...)."""

    def __init__(self, message: str, error_number: int | None = None):
        super().__init__(message)
        self.errno = error_number

_TMP = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # what temporary_name gives
_LEGACY_TMP = re.compile(r"\..+\.tmp|data\.tmp")  # the fixed names of earlier versions


def write_atomically(path: Path, write) -> None:
    """`write(tmp_path)`, then rename it to `path`: a crash never leaves a truncated `path`."""
    path = Path(path)
    make_dir(path.parent)
    tmp = path.with_name(temporary_name(path.name))
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666))
        write(tmp)
        if not tmp.is_file() or tmp.is_symlink():  # a writer that replaced it with something else
            raise ToytasksError(f"{path}: the temporary file {tmp.name} was replaced while writing")
        os.chmod(tmp, file_mode())  # writers that create their own file may make it 0600
        os.replace(tmp, path)
    except BaseException as error:
        discard_temporary(tmp)
        if isinstance(error, OSError):
            raise WriteError(f"{path}: cannot write ({describe(error)})", error.errno) from None
        raise


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def write_bytes(path: Path, data: bytes) -> None:
    write_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def make_dir(path: Path) -> Path:
    """`path` as a real directory, created with its parents if needed; a symlink there is refused."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file, or a dangling symlink
        pass
    except OSError as error:
        raise WriteError(f"{path}: cannot create the directory ({describe(error)})", error.errno) from None
    if path.is_symlink() or not path.is_dir():
        raise ToytasksError(f"{path}: is a symbolic link or not a directory; toytasks writes only into "
                            "real directories (remove it and run again)")
    return path


def temporary_name(name: str) -> str:
    """A fresh hidden name beside `name` (`.metrics.csv.1f3e9a0c.tmp`)."""
    return f".{name}.{secrets.token_hex(4)}.tmp"


def is_temporary(name: str) -> bool:
    """True for the temporary files and directories that toytasks' writes leave when killed."""
    return bool(_TMP.fullmatch(name) or _LEGACY_TMP.fullmatch(name))


def remove_temporaries(directory: Path) -> None:
    """Delete what killed writes left in `directory` (call it holding the run's lock)."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if is_temporary(entry.name):
            remove_path(Path(entry.path))


def file_mode() -> int:
    """The mode a new file gets under the current umask (0o644 under the usual 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    return 0o777 & ~_umask()


def describe(error: OSError) -> str:
    """An OSError in a few words: `No space left on device`, `Read-only file system`, ..."""
    if error.errno == errno.EFBIG:
        return "File too large: over the file size limit"
    return error.strerror or str(error) or type(error).__name__


def _umask() -> int:
    try:  # Linux reports it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def discard_temporary(tmp: Path) -> None:
    """Remove a temporary file after a failed write, never hiding that failure: on a read-only
    file system even unlinking a file that was never created fails (EROFS, not ENOENT)."""
    try:
        if os.path.lexists(tmp):
            remove_path(tmp)
    except OSError:
        pass


def remove_path(path: Path) -> None:
    """Remove a file, a symlink (not its target) or a directory tree, if it is there."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
