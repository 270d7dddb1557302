"""The one exception type a user sees: the CLI prints it as a one-line error and exits with 2."""
import reprlib

MAX_LINE = 300  # characters of an error message the CLI prints; the rest is cut

_REPR = reprlib.Repr()  # (keyword arguments need Python 3.12)
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 4, 6, 6, 6
_REPR.maxstring = _REPR.maxother = 60


def first_line(error: Exception) -> str:
    """An exception's message cut to one line (for one-line errors that wrap a library's)."""
    return one_line(str(error)) if str(error).strip() else type(error).__name__


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """The first line of `text`, at most `limit` characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def short(value) -> str:
    """repr(value), bounded: for a value quoted in an error message, however large it is."""
    return one_line(_REPR.repr(value), 80)


class ToytasksError(Exception):
    """A problem with what the user asked for (a config, a file, a run directory)."""


class ConfigError(ToytasksError):
    """A config value that cannot be accepted. `field` is its dotted path, e.g. `task.p`."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}" if field else message)

    def within(self, prefix: str) -> "ConfigError":
        """The same error with its field path prefixed by the enclosing section."""
        return ConfigError(f"{prefix}.{self.field}" if self.field else prefix, self.message)


class NonFiniteLoss(ToytasksError):
    """Training produced a NaN or infinite loss and stopped (exit code 3)."""

    def __init__(self, step: int, message: str = "", run: int = 0):
        self.step, self.run = step, run  # run: which of the runs trained together
        super().__init__(message or f"non-finite training loss at step {step}")


class ToytasksWarning(UserWarning):
    """Something the user should know that does not stop the work (a broken run left out of a set)."""
