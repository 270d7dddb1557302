"""Ctrl-C and SIGTERM (a preempted job, `scancel`, a sweep stopping its workers): stop cleanly and
say how to go on.

Within `handled()` both signals raise `Interrupted`, which the CLI prints as one line before it
exits with the shell's status for the signal (130 for Ctrl-C, 143 for SIGTERM). While a training
loop runs, `defer()` holds a signal until the end of the step it arrives in, where the loop writes
a resumable checkpoint and then raises (training/callbacks.py); a second Ctrl-C stops at once.
Anywhere else a signal raises at once: every file is written under a temporary name and renamed
(files.py), so nothing is left half written, and `--resume` goes on from the last checkpoint.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The work was stopped by a signal. A BaseException, as KeyboardInterrupt is, so that no
    `except Exception` swallows it; not a KeyboardInterrupt, which Lightning turns into exit(1).
    `resumable`: whether a resumable checkpoint holds the work done (the CLI then says how to resume)."""

    def __init__(self, signum: int, message: str = "", resumable: bool = True):
        self.signum, self.resumable = signum, resumable
        super().__init__(message or f"interrupted by {signal_name(signum)}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process killed by the signal


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class _State:
    deferring = False
    pending: Optional[int] = None


_state = _State()


def _handler(signum: int, frame) -> None:
    if not _state.deferring:
        raise Interrupted(signum)
    if _state.pending is None:
        _state.pending = signum  # acted on at the end of the step (pending())
    elif signum == signal.SIGINT:
        raise Interrupted(signum, "stopped at once by a second Ctrl-C")


@contextmanager
def handled():
    """Within: SIGINT and SIGTERM raise Interrupted (or, while a loop defers them, wait for its step
    to end). Re-entrant; the previous handlers come back after. Only the main thread gets signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def defer() -> None:
    """From now on hold a signal until `pending()` is checked (the end of a training step). Installs
    this module's handler again, over any installed since `handled()` (Lightning's SIGTERM one,
    whose own exception would stop the loop without a checkpoint)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _state.deferring, _state.pending = True, None
    for signum in SIGNALS:
        signal.signal(signum, _handler)


def stop_deferring() -> None:
    _state.deferring = False


def pending() -> Optional[int]:
    """The signal received while deferring, if any."""
    return _state.pending
