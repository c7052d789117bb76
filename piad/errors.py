"""Exception types. Every error a user can cause names the parameter or file and says how to fix it."""


class PiadError(Exception):
    """Base class for errors caused by input (parameters, files, data), not by bugs."""


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
    """A non-finite loss or weight during training."""

    def __init__(self, iteration: int, what: str, value: float):
        self.iteration, self.what, self.value = iteration, what, value
        super().__init__(
            f"training diverged at iteration {iteration}: {what} = {value}. The last good checkpoint is kept; "
            "try a lower learning rate (--set lr_eg=...) or another seed.")


class TrainingInterrupted(PiadError):
    """SIGINT/SIGTERM arrived; a checkpoint was written and the run can be resumed."""
