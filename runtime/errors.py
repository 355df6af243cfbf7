"""Error types of the device runtime. Every user-facing failure is one of these (or a formats error)."""

from __future__ import annotations


class RuntimeError_(Exception):  # noqa: N801 - trailing underscore: do not shadow the builtin RuntimeError
    """Base class of every error the runtime raises on bad input, files or settings."""


class BudgetError(RuntimeError_, ValueError):
    """A budget is invalid (wrong type, non-positive) or no prefix of the file fits it."""


class ConfigError(RuntimeError_, ValueError):
    """A training setting is invalid or does not match the trainer (batch size, schedule, labels...)."""


class TrainerError(RuntimeError_):
    """No usable trainer: the file has no trainer bundle, or the bundle does not match the data."""


class BackendError(RuntimeError_):
    """A backend is unknown or its optional dependency (torch, condenser) is not installed."""


class ViewError(RuntimeError_, ValueError):
    """Soft-label view parameters are malformed (box outside the image, non-integer box, bad partner)."""


class DivergedError(RuntimeError_):
    """Training produced a non-finite loss (learning rate too high, broken data)."""


class DataError(RuntimeError_, ValueError):
    """Test data cannot be read or has the wrong shape for the model."""


__all__ = ["BackendError", "BudgetError", "ConfigError", "DataError", "DivergedError", "RuntimeError_",
           "TrainerError", "ViewError"]
