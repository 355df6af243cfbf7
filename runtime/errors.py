"""Error types of the device runtime. Every user-facing failure is one of these (or a formats error)."""

from __future__ import annotations

import formats


class RuntimeError_(Exception):  # noqa: N801 - trailing underscore: do not shadow the builtin RuntimeError
    """Base class of every error the runtime raises on bad input, files or settings."""


class BudgetError(RuntimeError_, formats.BudgetError):
    """A budget is invalid (wrong type, non-positive, outside 1..ipc_max) or no prefix of the file fits it.

    A subclass of formats.BudgetError (itself a FormatError and a ValueError), so one `except` clause of
    either package catches every bad budget that reaches `runtime.load`.
    """


class ConfigError(RuntimeError_, ValueError):
    """A training setting is invalid or does not match the trainer (batch size, schedule, labels...)."""


class TrainerError(RuntimeError_):
    """No usable trainer: the file has no trainer bundle, or the bundle does not match the data."""


class BundleError(TrainerError, formats.FormatError, ValueError):
    """A trainer bundle is malformed, of another format or version, or its ONNX graphs hold what the
    exporter never writes (an op outside the allow-list, external data, a subgraph, a size over a cap)."""


class BackendError(RuntimeError_):
    """A backend is unknown or its optional dependency (torch) is not installed."""


class ViewError(RuntimeError_, ValueError):
    """Soft-label view parameters are malformed (box outside the image, non-integer box, bad partner)."""


class DivergedError(RuntimeError_):
    """Training produced a non-finite loss (learning rate too high, broken data)."""


class CheckpointError(RuntimeError_, ValueError):
    """A model checkpoint cannot be read (malformed, other format or version) or does not fit this run."""


class DataError(RuntimeError_, ValueError):
    """Test data cannot be read or has the wrong shape for the model."""


__all__ = ["BackendError", "BudgetError", "BundleError", "CheckpointError", "ConfigError", "DataError",
           "DivergedError", "RuntimeError_", "TrainerError", "ViewError"]
