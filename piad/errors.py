"""Exception types. Every error a user can cause names the parameter or file and says how to fix it."""

from __future__ import annotations

import errno


class PiadError(Exception):
    """Base class for errors caused by input (parameters, files, data), not by bugs. `exit_code`: the command
    line's exit status for it (2 = bad input, 1 = an I/O fault)."""

    exit_code = 2


class PiadIOError(PiadError, OSError):
    """Reading or writing a file failed for a reason outside piad (disk full, permission denied, ...)."""

    exit_code = 1


class ConfigError(PiadError, ValueError):
    """An unknown, mistyped or out-of-range configuration value."""


class DataError(PiadError):
    """Missing, unreadable or malformed data."""


class ResourceError(PiadError):
    """VGG weights or feature statistics that cannot be obtained or do not fit."""


class CheckpointError(PiadError):
    """A checkpoint that is truncated, foreign or from another configuration."""


class RunDirectoryError(PiadError):
    """A run directory that holds finished results or is locked by another process."""


class TrainingDiverged(PiadError):
    """A non-finite loss or weight during training. `kept`: where the last good checkpoint is (None: none)."""

    def __init__(self, iteration: int, what: str, value: float, kept: str | None = None):
        self.iteration, self.what, self.value = iteration, what, value
        where = (
            f"The last good checkpoint ({kept}) is kept, but resuming it repeats the divergence; "
            if kept
            else "No checkpoint was written before it; "
        )
        super().__init__(f"{self.headline()}. {where}train again with --overwrite and {self.advice()}.")

    def headline(self) -> str:
        return f"training diverged at iteration {self.iteration}: {self.what} = {self.value}"

    def advice(self) -> str:
        return divergence_advice(self.what)


def divergence_advice(what: str = "") -> str:
    """What to change after a divergence. Which learning rate caused it cannot be told from the first non-finite
    value (a generator that blew up shows first in the critics' losses), so both are named."""
    return (
        "lower learning rates (--set lr_eg=... for the encoder and generator, lr_d=... for the critics) or another seed"
    )


class TrainingInterrupted(PiadError):
    """SIGINT/SIGTERM arrived; a checkpoint was written and the run can be resumed."""

    exit_code = 130


# errno -> (what happened, what to do); these are faults of the machine, not of the input (exit code 1)
_IO_FAULTS = {
    errno.ENOSPC: ("no space left on device (the disk is full)", "free some space or choose a folder on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose a folder on another disk"),
    errno.EACCES: ("permission denied", "check the permissions of the file and its folder, or choose another path"),
    errno.EPERM: ("permission denied", "check the permissions of the file and its folder, or choose another path"),
    errno.EROFS: ("read-only file system", "choose a writable folder"),
}
# the path is of the wrong kind: bad input (exit code 2)
_BAD_PATHS = {
    errno.EEXIST: ("it exists and is not a folder", "give a folder path (or a new name)"),
    errno.ENOTDIR: ("a part of it is a file, not a folder", "give a path whose parents are folders"),
    errno.EISDIR: ("it is a folder, not a file", "give a file path"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ELOOP: ("a loop of symbolic links", "remove or fix the link"),
}


def os_error(e: OSError, path=None, action: str = "write") -> PiadError:
    """A one-line PiadError for an OSError met while `action`-ing `path`: PiadIOError (exit 1) for faults of the
    machine (disk full, permission denied, ...), PiadError (exit 2) for a path of the wrong kind."""
    if isinstance(e, PiadError):
        return e
    path = path if path is not None else (e.filename if e.filename is not None else "?")
    if e.errno in _BAD_PATHS:
        what, fix = _BAD_PATHS[e.errno]
        return PiadError(f"cannot {action} {str(path)!r}: {what}; {fix}.")
    what, fix = _IO_FAULTS.get(e.errno, (e.strerror or type(e).__name__, "check the disk and the path"))
    return PiadIOError(f"cannot {action} {str(path)!r}: {what}; {fix}.")
