"""The interface every registered model implements, and the error for a bad model configuration.

`Classifier` and the shape/norm helpers are runtime/models.py's, so the networks a device builds
from a trainer bundle and the ones the condenser trains share one definition.
"""

from __future__ import annotations

from condenser.errors import CondenserError
from runtime.models import Classifier, check_in_shape, check_num_classes, make_norm


class ModelConfigError(CondenserError, ValueError):
    """A model was asked for with options it cannot honour (unknown norm, input too small, ...)."""


__all__ = ["Classifier", "ModelConfigError", "check_in_shape", "check_num_classes", "make_norm"]
