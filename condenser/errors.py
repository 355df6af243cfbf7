"""Error types of the condenser. Every user-facing failure is one of these."""


class CondenserError(Exception):
    """Base class for errors the condenser raises on bad input or missing resources."""


class UnknownNameError(CondenserError, KeyError):
    """A name (dataset, model, method, profile, ...) is not in its registry."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(CondenserError, FileNotFoundError):
    """A dataset's files were not found in any of the searched roots."""


class CheckpointError(CondenserError):
    """A checkpoint or cache entry is missing, corrupt, or from an incompatible run."""
