"""The errors aivh raises on purpose, and the one line a user sees for any error.

Every error here carries a message that is words already (a file, a row, a run, what to do),
so `aivh: error:` prints its first line and nothing else.
"""
from __future__ import annotations


class UsageError(Exception):
    """A clear one-line problem with what the user asked for."""


class CsvError(ValueError):
    """The CSV itself is unusable (missing file or column): nothing is imported."""


class UnreadableImage(OSError):
    """An image that cannot be decoded: deleted, replaced, truncated, too large or not an image."""


class WeightsError(ValueError):
    """A weights or checkpoint file that cannot be used."""


class ExportRefused(ValueError):
    """The submission would be incomplete or invalid; nothing was written."""


class Cancelled(Exception):
    """Raised by a callback between batches to stop the run."""


class Pruned(Exception):
    """Raised by a callback after an epoch is recorded: a sweep's pruner stopped the run."""


class LostRun(Exception):
    """This process no longer owns the run (another took it over): it stops without writing."""


def error_line(e: BaseException) -> str:
    """What `aivh: error:` prints for an exception: its first line, or its type's name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def say(e: BaseException | str) -> None:
    """Print the one line `aivh: error: ...` on stderr, flushed."""
    import sys

    print(f"aivh: error: {e if isinstance(e, str) else error_line(e)}", file=sys.stderr, flush=True)


class Reported(Exception):
    """An error already printed with say(): the command exits 1 without printing it again."""
