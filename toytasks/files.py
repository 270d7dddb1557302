"""Crash-safe file writes: write under a temporary name, then rename into place."""
from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, write) -> None:
    """`write(tmp_path)`, then rename it to `path`: a crash never leaves a truncated `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: Path(tmp).write_text(text))
